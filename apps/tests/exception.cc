// A dynamically linked C++ program: libstdc++, a thrown and caught exception (unwinding
// through libgcc_s), a std::map.
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>

static int risky(int n) {
    if (n > 2) throw std::runtime_error("too big: " + std::to_string(n));
    return n * 10;
}

int main() {
    std::map<std::string, int> seen;
    for (int i = 0; i < 5; i++) {
        try {
            seen["ok"] += risky(i);
        } catch (const std::exception &e) {
            seen[e.what()]++;
        }
    }
    for (const auto &[k, v] : seen) std::printf("%s=%d\n", k.c_str(), v);
    return 0;
}
