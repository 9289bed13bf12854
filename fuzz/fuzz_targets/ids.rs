//! The text forms of ids: `ProcId`, `ActorId` and `PortId` parsers. Whatever
//! parses must print in a form that parses back to the same id.
#![no_main]

use std::fmt::{Debug, Display};
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use quicmesh::{ActorId, PortId, ProcId};

fn check<T>(text: &str)
where
    T: FromStr + Display + Debug + PartialEq,
    T::Err: Display,
{
    let Ok(id) = text.parse::<T>() else {
        return;
    };
    let printed = id.to_string();
    match printed.parse::<T>() {
        Ok(again) => assert_eq!(again, id, "{text:?} printed as {printed:?}"),
        Err(e) => panic!("{text:?} parsed as {id:?}, printed as {printed:?}, which fails: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check::<ProcId>(text);
    check::<ActorId>(text);
    check::<PortId>(text);
});
