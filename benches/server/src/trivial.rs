//! The reference for the service benchmark: the most trivial axum handler, served the way
//! `retrywise serve` is (same runtime, same axum, same loopback), answering a constant JSON
//! to any POST.
//!
//! Usage: `trivial-server 127.0.0.1:18182`

use axum::Router;
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18182".into());
    let app = Router::new().route(
        "/v1/predict",
        post(|_body: axum::body::Bytes| async {
            (
                [("content-type", "application/json")],
                r#"{"p_success":0.5}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("trivial server on http://{addr}");
    axum::serve(listener, app).await
}
