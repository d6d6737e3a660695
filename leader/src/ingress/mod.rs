//! Ingress: the proxy configuration the leader makes from `[[ingress]]` objects and the services
//! they name. Pure: ingresses and services in, the proxy's JSON out (`caddy.rs`); delivering it as
//! a config to the proxy's every-board app, reloading it and the certificates are not here yet
//! (issue 32; ADR 16).

pub mod caddy;
