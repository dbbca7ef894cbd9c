//! `tocsin healthcheck`: the container's health probe. It GETs `/readyz` on the configured
//! listen address (loopback when Tocsin listens on every interface), over HTTPS when `[tls]` is
//! set, and exits 0 on 200, 1 otherwise, saying why in one line. Unlike a shell `/dev/tcp`
//! probe it needs no shell or curl in the image, and speaks HTTPS.

use crate::settings::Settings;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// Under the image's HEALTHCHECK timeout (5 s), so the probe reports its own reason.
const TIMEOUT: Duration = Duration::from_secs(4);

pub async fn run(settings: &Settings) -> ExitCode {
    let scheme = if settings.tls.files().ok().flatten().is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}/readyz", local_address(settings.listen));
    let http = reqwest::Client::builder()
        .timeout(TIMEOUT)
        // Tocsin probing itself on loopback: its certificate names the public host, not
        // 127.0.0.1, and what is checked here is readiness, not identity.
        .danger_accept_invalid_certs(true)
        .build()
        .expect("a client with these options builds");
    match http.get(&url).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => {
            println!("ready: {url}");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            eprintln!("not ready: {url} answered {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("not ready: cannot reach {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where this host reaches the listener: a wildcard address is reached on loopback.
fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}
