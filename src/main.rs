fn main() {
    print!("{}", tollgate::api::crds_yaml().unwrap());
}
