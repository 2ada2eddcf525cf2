//! A micro-batcher in front of a database, inside an axum handler, with backpressure
//! all the way to the HTTP client.
//!
//! `POST /orders` takes a JSON array of orders. The handler submits them to a
//! [`Batcher`], which writes them to SQLite in batches of up to 50 orders, or every
//! 20 ms, whichever comes first, and answers only once the batch holding them has
//! been committed:
//!
//! * `200`: the orders are in the database;
//! * `503` with `Retry-After`: the batcher already holds `max_pending` orders not yet
//!   written (the database is slower than the traffic); nothing was accepted: retry;
//! * `413`: more orders in one request than the batcher ever holds;
//! * `500`: the write failed or timed out; the orders may or may not be in; retrying is
//!   safe because the insert is idempotent (`INSERT OR IGNORE` on the order id).
//!
//! The example starts the server on a free loopback port, runs 16 clients posting
//! 4,000 orders against a deliberately slow database (30 ms per batch), and checks
//! that every order landed exactly once, that the database saw far fewer writes than
//! requests, and that clients were pushed back with 503s instead of the server
//! queueing without bound. Run it with:
//!
//! ```text
//! cargo run -p lungfish --example batcher_axum
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lungfish::batcher::{Batcher, BatcherSettings, Rejected};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Order {
    id: i64,
    customer: String,
    amount: f64,
}

#[derive(Clone)]
struct App {
    orders: Batcher<Order>,
}

async fn post_orders(State(app): State<App>, Json(orders): Json<Vec<Order>>) -> Response {
    // Wait at most 5 ms for room: a client is better told to come back than held.
    let receipt = match app.orders.submit(orders, Duration::from_millis(5)).await {
        Ok(receipt) => receipt,
        Err(e @ Rejected::Full(_)) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                e.to_string(),
            )
                .into_response();
        }
        Err(e @ Rejected::TooLarge(_)) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response();
        }
        Err(e @ Rejected::Closed(_)) => {
            return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
    };
    // The batcher bounds the write itself (flush_timeout); this answer waits for it.
    match receipt.await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Opens the database and returns the flush function: one transaction per batch.
fn database_writer(
    path: &std::path::Path,
    writes: Arc<AtomicUsize>,
) -> impl FnMut(Vec<Order>) -> tokio::task::JoinHandle<Result<(), String>> + Send + 'static {
    let conn = rusqlite::Connection::open(path).expect("open the database");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL);",
    )
    .expect("create the table");
    let conn = Arc::new(Mutex::new(conn));
    move |batch: Vec<Order>| {
        let (conn, writes) = (conn.clone(), writes.clone());
        // SQLite blocks: write on Tokio's blocking pool, not on the runtime's threads.
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(30)); // a slow disk
            let mut conn = conn.lock().map_err(|e| e.to_string())?;
            let tx = conn.transaction().map_err(|e| e.to_string())?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO orders (id, customer, amount) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(|e| e.to_string())?;
                for o in &batch {
                    insert
                        .execute(rusqlite::params![o.id, o.customer, o.amount])
                        .map_err(|e| e.to_string())?;
                }
            }
            tx.commit().map_err(|e| e.to_string())?;
            writes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("orders.db");
    let writes = Arc::new(AtomicUsize::new(0));
    let mut write = database_writer(&db, writes.clone());
    // At most 100 orders accepted and not yet written: 10 requests' worth, fewer than
    // the 16 clients send at once, so the slow database pushes some of them back.
    let settings = BatcherSettings {
        max_items: 50,
        max_age: Duration::from_millis(20),
        max_pending: 100,
        flush_timeout: Duration::from_secs(5),
    };
    let (orders, worker) = Batcher::spawn(settings, move |batch| {
        let written = write(batch);
        async move { written.await.map_err(|e| e.to_string())? }
    });

    let app = Router::new()
        .route("/orders", post(post_orders))
        .with_state(App { orders });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    // 16 clients, 25 requests of 10 orders each: 4,000 orders.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let pushed_back = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..16u64 {
        let (client, url) = (client.clone(), url.clone());
        let (pushed_back, requests) = (pushed_back.clone(), requests.clone());
        clients.push(tokio::spawn(async move {
            for r in 0..25u64 {
                let body: Vec<String> = (0..10u64)
                    .map(|i| {
                        let id = (c * 25 + r) * 10 + i;
                        format!(r#"{{"id":{id},"customer":"c{c}","amount":{}.5}}"#, id % 100)
                    })
                    .collect();
                let body = Bytes::from(format!("[{}]", body.join(",")));
                // Retry on 503 with a short jittered pause (a real client would honour
                // Retry-After); give up after 200 tries.
                let mut tries = 0;
                loop {
                    tries += 1;
                    assert!(tries <= 200, "client {c}: still refused after 200 tries");
                    requests.fetch_add(1, Ordering::Relaxed);
                    let request = hyper::Request::post(&url)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let response =
                        tokio::time::timeout(Duration::from_secs(10), client.request(request))
                            .await
                            .expect("an answer within 10 s")
                            .expect("the server answers");
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    match status {
                        StatusCode::OK => break,
                        StatusCode::SERVICE_UNAVAILABLE => {
                            pushed_back.fetch_add(1, Ordering::Relaxed);
                            let pause = 5 + (c * 7 + tries) % 20;
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                        other => panic!("client {c}: unexpected {other}"),
                    }
                }
            }
        }));
    }
    for c in clients {
        c.await.expect("a client finished");
    }
    let _ = stop.send(());
    server.await.unwrap().expect("the server ran");
    // The router (and the batcher it held) is dropped: the worker flushes and ends.
    worker.join().await;

    let conn = rusqlite::Connection::open(&db).unwrap();
    let (rows, distinct): (i64, i64) = conn
        .query_row("SELECT count(*), count(DISTINCT id) FROM orders", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let (writes, requests, pushed_back) = (
        writes.load(Ordering::Relaxed),
        requests.load(Ordering::Relaxed),
        pushed_back.load(Ordering::Relaxed),
    );
    println!(
        "batcher_axum: {rows} orders stored from {requests} requests in {writes} database writes; {pushed_back} requests were told 503 and retried"
    );
    assert_eq!(rows, 4_000, "every order stored");
    assert_eq!(distinct, rows, "no order twice");
    assert!(
        writes < 200,
        "orders were batched: {writes} writes for 400 accepted requests"
    );
    assert!(pushed_back > 0, "a slow database pushes clients back");
    println!("batcher_axum: ok");
}
