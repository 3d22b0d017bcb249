//! The jail, from inside: a jailed process (applying the same layers a
//! worker applies) tries what guest code cannot express, and each attempt
//! must fail the way its layer promises.

use webtask::jail::check::{run, Outcome};
use webtask::jail::{JailConfig, JailMode, LAYERS};

fn check(action: &str) -> Outcome {
    let config = JailConfig { mode: JailMode::Required, ..JailConfig::default() };
    let outcome = run(env!("CARGO_BIN_EXE_webtask").as_ref(), &config, action).expect("jail-check ran");
    assert_eq!(outcome.layers.len(), LAYERS.len(), "{outcome:?}");
    for layer in &outcome.layers {
        assert!(layer.applied, "layer {} not applied: {}", layer.layer, layer.detail);
    }
    outcome
}

fn assert_refused(action: &str, errno_text: &str) {
    let outcome = check(action);
    assert!(!outcome.succeeded, "{action} succeeded inside the jail: {}", outcome.detail);
    assert!(outcome.detail.contains(errno_text), "{action}: expected {errno_text:?}, got {:?}", outcome.detail);
}

#[test]
fn every_layer_applies_on_this_host() {
    let outcome = check("nothing");
    assert!(outcome.succeeded);
    let names: Vec<_> = outcome.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(names, LAYERS);
}

#[test]
fn the_jailed_process_is_pid_1_of_its_own_namespace() {
    let outcome = check("pid");
    assert_eq!(outcome.detail, "pid=1", "{outcome:?}");
}

#[test]
fn fork_is_refused() {
    assert_refused("fork", "Operation not permitted");
}

#[test]
fn clone3_answers_enosys_so_libc_falls_back_to_clone() {
    assert_refused("clone3", "Function not implemented");
}

#[test]
fn execve_is_refused() {
    assert_refused("execve", "Operation not permitted");
}

#[test]
fn network_sockets_are_refused() {
    for family in ["socket-inet", "socket-inet6", "socket-netlink"] {
        assert_refused(family, "Operation not permitted");
    }
}

#[test]
fn unix_sockets_remain_for_the_node_channel() {
    let outcome = check("socket-unix");
    assert!(outcome.succeeded, "{}", outcome.detail);
}

#[test]
fn ptrace_of_the_parent_is_refused() {
    assert_refused("ptrace", "Operation not permitted");
}

#[test]
fn signals_to_other_processes_are_refused() {
    assert_refused("kill-parent", "Operation not permitted");
}

#[test]
fn root_cannot_be_regained() {
    assert_refused("setuid-root", "Operation not permitted");
}

#[test]
fn no_file_can_be_read() {
    for path in ["read:/etc/passwd", "read:/proc/1/environ", "read:/proc/self/environ", "read:/"] {
        assert_refused(path, "Operation not permitted");
    }
}

#[test]
fn no_file_can_be_written() {
    for path in ["write:/x", "write:/tmp/x", "write:/dev/shm/x"] {
        assert_refused(path, "Operation not permitted");
    }
}

#[test]
fn thread_count_is_capped() {
    let outcome = check("threads");
    assert!(!outcome.succeeded, "started 1000 threads: {}", outcome.detail);
    let started: usize = outcome.detail.split(' ').next().unwrap().parse().unwrap();
    assert!(started < 64, "{}", outcome.detail);
}

#[test]
fn terminal_and_device_ioctls_are_refused() {
    assert_refused("ioctl-tiocsti", "Operation not permitted");
}
