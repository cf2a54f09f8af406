//! Prints the host report and the measured round trip (what `tenantvm doctor` shows).
fn main() {
    let r = vmm::doctor::report().expect("KVM");
    println!("{r:#?}");
    let rt = vmm::doctor::measure(2000, 5).expect("measure");
    println!("{rt:?}");
}
