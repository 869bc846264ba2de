//! The upstream API server: the client, its bootstrap and its certificate rotation, the serving certificate, the objects pods refer to
//! (configMaps, secrets, services), strategic-merge patches, and the event recorder. The layers above use the API
//! through here.

pub mod auth;
pub mod certificate;
pub mod client;
pub mod events;
pub mod objects;
pub mod serving;
pub mod strategic;
