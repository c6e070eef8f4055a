//! Writes the busybox OCI image tar (image `localhost/husk/busybox:latest`)
//! and prints its path: `cargo run -p husk-tests --example busybox_image`.
//! `ctr images import` takes it (setup.sh's containerd demo).

fn main() {
    match husk_tests::oci::busybox_image(husk_tests::oci::BUSYBOX_IMAGE, &["sh"]) {
        Ok(p) => println!("{}", p.display()),
        Err(e) => {
            eprintln!("busybox_image: {e}");
            std::process::exit(1);
        }
    }
}
