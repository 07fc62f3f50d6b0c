//! The sans-IO core: CoAP message layer, LwM2M state machines and the object model's dispatch.
//! It never touches sockets, files, clocks, processes or the OS RNG: bytes, commands, effect
//! outcomes and `now` go in; datagrams, a timeout, effects and events come out.

pub mod client;
pub mod coap;
pub mod effect;
pub mod lwm2m;
pub mod object;
pub mod sim;
