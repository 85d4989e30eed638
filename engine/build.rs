//! `sqlx::migrate!` embeds the migration files when the crate compiles:
//! a new or changed migration must rebuild the crate (sqlx's advice).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
