fn main() {
    for c in certus_api::all_crds() {
        println!("---\n{}", serde_yaml::to_string(&c).unwrap());
    }
}
