//! The throwaway PostgreSQL of `support::postgres` behaves as the other
//! tests rely on: it starts, counts statements, dies, comes back, freezes and
//! thaws.

use std::time::{Duration, Instant};

use healthd_testkit::postgres::{describe_error, TestPostgres};

/// Runs `SELECT 1` on `client` within `within`.
async fn select_one(client: &tokio_postgres::Client, within: Duration) -> Result<(), String> {
    match tokio::time::timeout(within, client.query_one("SELECT 1::int4", &[])).await {
        Ok(Ok(row)) if row.get::<_, i32>(0) == 1 => Ok(()),
        Ok(Ok(_)) => Err("SELECT 1 did not return 1".into()),
        Ok(Err(e)) => Err(format!("query failed: {}", describe_error(&e))),
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}

#[tokio::test]
async fn starts_counts_statements_dies_on_kill_and_comes_back_on_restart() {
    let began = Instant::now();
    let pg = TestPostgres::start().await;
    eprintln!("start took {:?}", began.elapsed());
    assert_ne!(pg.port(), 5432);

    let client = pg.client().await;
    let before = pg.executed_statements().await;
    select_one(&client, Duration::from_secs(5)).await.unwrap();
    let after = pg.executed_statements().await;
    assert_eq!(after - before, 1, "one query, one statement");
    assert_eq!(pg.executed_statements().await, after, "counting runs no statement");

    // A role with a password: the right one gets in, a wrong one does not.
    pg.create_role("health checker", "p@ss:w/rd'1").await;
    let (checker, connection) = tokio_postgres::connect(
        &pg.url_with_password("health checker", "p@ss:w/rd'1"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the right password is accepted");
    tokio::spawn(connection);
    select_one(&checker, Duration::from_secs(5)).await.unwrap();
    let refused = tokio_postgres::connect(
        &pg.url_with_password("health checker", "wrong"),
        tokio_postgres::NoTls,
    )
    .await;
    let message = describe_error(&refused.err().expect("a wrong password is refused"));
    assert!(message.contains("password authentication failed"), "{message}");

    pg.kill();
    assert!(pg.postmaster_pid().is_none());
    // kill() returns once every backend is gone: old connections are broken
    // and new ones refused at once.
    select_one(&client, Duration::from_secs(5)).await.expect_err("the old connection is broken");
    let refused = tokio::time::timeout(Duration::from_secs(5), pg.try_client()).await;
    assert!(matches!(refused, Ok(Err(_))), "a new connection is refused");
    let counted_while_down = pg.executed_statements().await;

    let began = Instant::now();
    pg.restart().await;
    eprintln!("restart after kill took {:?}", began.elapsed());
    let client = pg.client().await;
    select_one(&client, Duration::from_secs(5)).await.unwrap();
    assert_eq!(pg.executed_statements().await, counted_while_down + 1);

    let began = Instant::now();
    pg.restart().await; // of a running server: kill, then start
    eprintln!("restart of a running server took {:?}", began.elapsed());
    select_one(&pg.client().await, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_frozen_server_hangs_until_thawed() {
    let pg = TestPostgres::start().await;
    let client = pg.client().await;
    select_one(&client, Duration::from_secs(5)).await.unwrap();

    pg.freeze();
    assert!(pg.is_frozen());
    let err =
        select_one(&client, Duration::from_millis(500)).await.expect_err("a frozen server answers");
    assert!(err.starts_with("no answer"), "{err}");
    let connecting = tokio::time::timeout(Duration::from_millis(500), pg.try_client()).await;
    assert!(connecting.is_err(), "a new connection's handshake hangs");
    // Counting does not ask the server.
    let counted = tokio::time::timeout(Duration::from_secs(1), pg.executed_statements())
        .await
        .expect("counting hangs");

    pg.thaw();
    assert!(!pg.is_frozen());
    select_one(&client, Duration::from_secs(5)).await.expect("the old connection works again");
    select_one(&pg.client().await, Duration::from_secs(5))
        .await
        .expect("new connections work again");
    // The two above; the query that timed out while frozen never got past
    // its prepare step (tokio-postgres sends the execute after the answer).
    assert_eq!(pg.executed_statements().await, counted + 2);

    // Dropping a frozen server kills it and removes its files.
    pg.freeze();
    let pid = pg.postmaster_pid().expect("running");
    let data_dir = pg.data_dir().to_path_buf();
    let began = Instant::now();
    drop(pg);
    eprintln!("drop of a frozen server took {:?}", began.elapsed());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the postmaster is gone");
    assert!(!data_dir.exists(), "the temp dir is removed");
}
