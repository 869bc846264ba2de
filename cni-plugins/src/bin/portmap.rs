//! portmap plugin: see `cni_plugins::portmap`.

fn main() {
    cni_plugins::skel::run(&cni_plugins::portmap::Portmap)
}
