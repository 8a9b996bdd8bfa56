//! loadgen against its own mock server (`loadgen serve`): the resultset shape set on the server
//! is what the client verifies, for text and prepared queries, closed loop and pipelined.

mod common;

use common::{loadgen, Mock};

#[test]
fn mock_rows_are_verified_text_prepared_and_pipelined() {
    let mock = Mock::start(&["--rows", "3", "--columns", "2"]);
    let target = mock.target();
    let pid = mock.pid().to_string();
    for extra in [
        &["qps"][..],
        &["qps", "--prepared"],
        &["pipeline", "--depth", "16"],
        &["pipeline", "--prepared", "--depth", "4"],
    ] {
        let mut args = extra.to_vec();
        args.extend([
            "--target",
            &target,
            "--connections",
            "8",
            "--threads",
            "2",
            "--duration",
            "1",
            "--expect-rows",
            "3",
            "--pid",
            &pid,
            "--json",
        ]);
        let r = loadgen(&args);
        assert_eq!(r.code, 0, "{extra:?}: {}", r.stderr);
        let v = r.json();
        assert_eq!(v["connect"]["established"], 8);
        assert!(v["queries"].as_u64().unwrap() > 1000, "{extra:?}: {v}");
        assert_eq!(v["errors"]["mismatch"], 0);
        assert!(v["cpu_s"]["target"].as_f64().is_some());
    }

    let r = loadgen(&[
        "qps",
        "--target",
        &target,
        "--connections",
        "2",
        "--duration",
        "1",
        "--expect-rows",
        "1",
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.json()["errors"]["mismatch"].as_u64().unwrap() > 0);
}

#[test]
fn mock_ok_replies_have_no_rows() {
    let mock = Mock::start(&["--ok"]);
    let target = mock.target();
    let r = loadgen(&[
        "rate",
        "--rate",
        "300",
        "--target",
        &target,
        "--connections",
        "4",
        "--duration",
        "1",
        "--expect-rows",
        "0",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let q = v["queries"].as_u64().unwrap();
    assert!((240..=303).contains(&q), "{v}");
}
