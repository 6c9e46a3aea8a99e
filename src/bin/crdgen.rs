//! Prints the Ec2Instance CRD as YAML: `cargo run --bin crdgen > crds/ec2instance.yaml`.

fn main() {
    print!("{}", ec2_operator::crd::crd_yaml());
}
