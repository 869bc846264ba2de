//! bridge plugin: see `cni_plugins::bridge`.

fn main() {
    cni_plugins::skel::run(&cni_plugins::bridge::Bridge)
}
