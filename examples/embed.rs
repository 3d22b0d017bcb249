//! Embedding the engine in another Rust service: no HTTP, no node.
//!
//! `cargo run --example embed`

use webtask::{Context, Engine, EngineConfig, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut config = EngineConfig::default();
    config.limits.cpu_ms = 50;
    let engine = Engine::new(config);

    // A hook a customer wrote; `context.data` is what our service passes in.
    let hook = r#"
        module.exports = async (context) => {
            const user = context.data.user;
            return { allow: user.endsWith('@example.com'), user };
        };
    "#;
    let ctx = Context::new().data("user", "ada@example.com");
    let out = engine.run_in("tenant-42", hook, ctx).await?;
    println!("{} {}", out.status, String::from_utf8_lossy(&out.body));

    // Limits come back as typed errors with their figures.
    match engine.run_in("tenant-42", "return function (cb) { for (;;) {} }", Context::new()).await {
        Err(Error::CpuLimit { limit_ms, used_ms }) => println!("cpu_limit: {used_ms} ms used of {limit_ms} ms"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
