//! Integration tests: one binary (V8 links once), one module per capability.

mod api;
mod cli;
mod egress;
mod embed;
mod errors;
mod escape;
mod http_client;
mod jail;
mod limits;
mod logs;
mod logs_kafka;
mod models;
mod modules;
mod node;
mod workers;
mod support;
