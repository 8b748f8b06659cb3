//! HTTP-level tests: each test gets a fresh database and a broker on a random port, and
//! talks to it like a client would.

mod helpers;

mod group_commit;
mod smoke;
