//! The server starts as a user starts it and answers a real client.

mod common;

use common::Server;

#[test]
fn set_and_get_with_both_protocols_and_shard_counts() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut con = server.client();
        let _: () = redis::cmd("SET")
            .arg("foo")
            .arg("bar")
            .query(&mut con)
            .expect("SET");
        let got: String = redis::cmd("GET").arg("foo").query(&mut con).expect("GET");
        assert_eq!(got, "bar");
        let mut con3 = server.client_resp3();
        let got: Option<String> = redis::cmd("GET")
            .arg("missing")
            .query(&mut con3)
            .expect("GET");
        assert_eq!(got, None);
        let mut raw = server.raw();
        assert_eq!(raw.cmd(&["GET", "missing"]), b"$-1\r\n");
        assert_eq!(raw.cmd(&["HELLO", "3"]).first(), Some(&b'%'));
        assert_eq!(raw.cmd(&["GET", "missing"]), b"_\r\n");
    }
}
