//! The functional suite of tests/passthrough.rs again, through scripted sessions: this binary's
//! name makes the harness's `Target::from_env()` choose `Target::Scripted`
//! (tests/lua/observe.lua: every hook, every query re-injected and its result held for
//! read_query_result, then forwarded).

#[path = "passthrough.rs"]
mod suite;
