//! COPY FROM STDIN and COPY TO STDOUT through the proxy respect RLS.

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};

use crate::harness::{db_error, scalar, summarize, wait_for, Env, Raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_respect_rls() {
    let env = Env::start().await;
    let acme = env.connect("acme").await;

    // COPY TO STDOUT returns only the tenant's rows.
    let stream = acme
        .copy_out("COPY customers (tenant_id, name) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| l.starts_with("acme\t")), "{text}");

    // The supported path: COPY FROM STDIN into a temp table (1000 rows, many CopyData
    // messages), then INSERT ... SELECT, where RLS applies: rows get the session tenant.
    acme.batch_execute("CREATE TEMP TABLE staging (name text, email text)")
        .await
        .unwrap();
    let sink = acme.copy_in("COPY staging FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("copied {i}\tc{i}@acme\n"));
    }
    for chunk in data.as_bytes().chunks(4096) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let n = acme
        .execute(
            "INSERT INTO customers (name, email) SELECT name, email FROM staging",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1000);

    // Another tenant's rows cannot be smuggled in through the staging table.
    let err = acme
        .execute(
            "INSERT INTO customers (tenant_id, name) SELECT 'globex', name FROM staging LIMIT 1",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");

    // The session is still usable after the failed COPY.
    let n: i64 = scalar(&acme, "SELECT count(*) FROM customers").await;
    assert_eq!(n, 1003);
    let globex = env.connect("globex").await;
    let n: i64 = scalar(&globex, "SELECT count(*) FROM customers").await;
    assert_eq!(n, 2);
    let admin = env.admin().await;
    let n: i64 = scalar(
        &admin,
        "SELECT count(*) FROM customers WHERE tenant_id = 'acme'",
    )
    .await;
    assert_eq!(n, 1003);
}

/// Transaction mode, one server: tokio-postgres sends a Sync right behind the Execute
/// of `COPY ... FROM STDIN`, which PostgreSQL ignores in copy-in mode. The proxy must
/// not wait for its ReadyForQuery: after each COPY (succeeding or failing) the server
/// goes back to the pool, so the other client's transactions get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_in_releases_the_server_in_transaction_mode() {
    let env = Env::with(|c| {
        c.pool.mode = rlsgate::config::PoolMode::Transaction;
        c.pool.size = 1;
        c.pool.acquire_timeout = std::time::Duration::from_secs(10);
    })
    .await;
    env.admin()
        .await
        .batch_execute("CREATE TABLE copy_sink (x int); GRANT ALL ON copy_sink TO app_rls")
        .await
        .unwrap();
    let a = env.connect("acme").await;
    let b = env.connect("globex").await;
    for i in 0..10 {
        let sink = a.copy_in("COPY copy_sink FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        sink.send(Bytes::from(format!("{i}\n"))).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1);
        // A failing COPY (bad data) ends the same way.
        let sink = a.copy_in("COPY copy_sink FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        sink.send(Bytes::from_static(b"not a number\n"))
            .await
            .unwrap();
        let err = sink.finish().await.unwrap_err();
        assert_eq!(db_error(&err).0, "22P02");
        // The other client gets the only server.
        let n: i64 = scalar(&b, "SELECT count(*) FROM copy_sink").await;
        assert_eq!(n, i + 1);
    }
}

/// A COPY that fails after a Sync the server may or may not have read in copy mode
/// (a Sync between CopyData messages) leaves the server's replies in doubt: in
/// transaction mode that server is closed, never handed to the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copy_with_syncs_inside_closes_the_server() {
    use postgres_protocol::message::frontend;
    let env = Env::with(|c| {
        c.pool.mode = rlsgate::config::PoolMode::Transaction;
        c.pool.size = 1;
        c.pool.acquire_timeout = std::time::Duration::from_secs(10);
    })
    .await;
    env.admin()
        .await
        .batch_execute("CREATE TABLE copy_sink (x int); GRANT ALL ON copy_sink TO app_rls")
        .await
        .unwrap();
    let metrics = &env.proxy.state.metrics;
    let discarded = rlsgate::metrics::Metrics::get(&metrics.upstream_discarded);
    let mut a = Raw::connect(env.proxy.addr.port(), "a", &env.token("acme")).await;
    let mut m = bytes::BytesMut::new();
    frontend::query("COPY copy_sink FROM STDIN", &mut m).unwrap();
    a.send(&m).await;
    assert_eq!(a.read().await.0, b'G');
    let mut m = bytes::BytesMut::new();
    frontend::CopyData::new(&b"not a number\n"[..])
        .unwrap()
        .write(&mut m);
    frontend::sync(&mut m);
    frontend::copy_done(&mut m);
    a.send(&m).await;
    let replies = summarize(&a.until_ready(1).await);
    assert!(replies[0].starts_with("E 22P02"), "{replies:?}");
    wait_for("the server in doubt to be closed", || async {
        rlsgate::metrics::Metrics::get(&metrics.upstream_discarded) > discarded
    })
    .await;
    // The next client gets a clean server.
    let b = env.connect("globex").await;
    let n: i64 = scalar(&b, "SELECT count(*) FROM copy_sink").await;
    assert_eq!(n, 0);
}
