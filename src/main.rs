fn main() {
    println!("ferrotron (under construction)");
}
