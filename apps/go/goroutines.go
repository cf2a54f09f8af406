// goroutines — Go's runtime inside tenantvm (crates/vmm/tests/threads.rs): GOMAXPROCS=4
// threads, 16 goroutines that sleep and compute, results over a channel, a WaitGroup, a
// timer, a mutex-protected counter, and a nil dereference recovered as a panic (Go's
// SIGSEGV handler).  Prints a known result.
package main

import (
	"fmt"
	"runtime"
	"sync"
	"time"
)

type node struct{ next *node }

// nilDeref reads through a nil pointer: Go turns the SIGSEGV into a panic it can recover.
func nilDeref(n *node) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	return fmt.Sprint(n.next.next)
}

func main() {
	runtime.GOMAXPROCS(4)
	results := make(chan int, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	count := 0
	for i := 1; i <= 16; i++ {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			time.Sleep(time.Duration(n%4) * time.Millisecond)
			s := 0
			for k := 1; k <= n*1000; k++ {
				s += k % 7
			}
			mu.Lock()
			count++
			mu.Unlock()
			results <- s
		}(i)
	}
	go func() { wg.Wait(); close(results) }()
	total := 0
	for r := range results {
		total += r
	}
	start := time.Now()
	<-time.After(5 * time.Millisecond)
	waited := time.Since(start) >= 5*time.Millisecond
	fmt.Printf("total=%d goroutines=%d procs=%d timer=%v\n", total, count, runtime.GOMAXPROCS(0), waited)
	fmt.Println("recovered:", nilDeref(&node{}))
}
