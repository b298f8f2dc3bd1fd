fn main() {
    for b in attnkit::list_backends() {
        println!("{}", b.name);
    }
}
