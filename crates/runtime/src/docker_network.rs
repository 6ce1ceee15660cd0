//! A Docker network per workflow (SEMANTICS §6 with `runtime: docker`): the
//! workflow's containers join a bridge network of their own, where each is
//! found by its task name (`{{host:TASK}}`) through the daemon's DNS, and
//! listens on any port without meeting another workflow's containers.
//!
//! The network is made by the first attempt that needs it and removed by
//! the last one to leave (the daemon refuses while a container is attached,
//! which is how "last" is known; an attempt that finds it removed under it
//! makes it again). `OSMO_URL` on this host's loopback is carried into the
//! network by a forwarder on the network's gateway address, so `osmo`
//! inside a container reaches the service.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Mutex;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{EndpointSettings, NetworkCreateRequest, NetworkingConfig};

/// Label on every network the runtime makes (value: the workflow).
pub const LABEL: &str = "osmo.workflow";

static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The network of `workflow_id` (a name Docker accepts).
pub(crate) fn name(workflow_id: &str) -> String {
    super::docker::container_name(&format!("osmo-{workflow_id}"))
}

/// The endpoint settings that put a container in `network` under `alias`.
pub(crate) fn endpoint(network: &str, alias: &str) -> NetworkingConfig {
    NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network.to_string(),
            EndpointSettings {
                aliases: Some(vec![alias.to_string()]),
                ..Default::default()
            },
        )])),
    }
}

/// The workflow's network, made if missing; returns its gateway (this
/// host's address in it), when the daemon names one.
pub(crate) async fn ensure(
    docker: &Docker,
    workflow_id: &str,
) -> Result<Option<Ipv4Addr>, DockerError> {
    let network = name(workflow_id);
    // The daemon makes two networks of one name when asked at the same
    // moment (and then answers "ambiguous"): this process asks one at a time.
    let _one_at_a_time = MAKING.lock().await;
    for _ in 0..3 {
        match docker.inspect_network(&network, None).await {
            Ok(inspect) => {
                let gateway = inspect
                    .ipam
                    .and_then(|i| i.config)
                    .into_iter()
                    .flatten()
                    .find_map(|c| c.gateway?.parse().ok());
                return Ok(gateway);
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e),
        }
        let request = NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                LABEL.to_string(),
                workflow_id.to_string(),
            )])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            // Made here, or by a sibling at the same moment: look again.
            Ok(_)
            | Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(DockerError::DockerResponseServerError {
        status_code: 404,
        message: format!("network {network} was removed each time it was made"),
    })
}

/// Networks whose removal failed because the daemon was gone; the next
/// attempt that reaches the daemon removes them (as its containers).
static LEFTOVERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Removes the workflow's network unless a container still uses it.
pub(crate) async fn release(docker: &Docker, workflow_id: &str) {
    remove(docker, name(workflow_id)).await;
}

async fn remove(docker: &Docker, network: String) {
    match docker.remove_network(&network).await {
        // Removed; gone already; or 403, attached containers: a sibling still
        // runs and removes it when it ends.
        Ok(()) | Err(DockerError::DockerResponseServerError { .. }) => {}
        Err(_) => LEFTOVERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(network),
    }
}

/// Removes the networks earlier attempts could not, once the daemon is back.
pub(crate) async fn remove_leftovers(docker: &Docker) {
    let pending = std::mem::take(&mut *LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()));
    for network in pending {
        remove(docker, network).await;
    }
}

/// `url` as a container in a network with `gateway` reaches it: a URL on
/// this host's loopback becomes the gateway's address, where a forwarder
/// carries connections to the loopback port. Other URLs are kept.
pub(crate) fn url_inside(url: &str, gateway: Ipv4Addr) -> Result<String, String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(url.to_string());
    };
    let (host_port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Ok(url.to_string());
    };
    if !matches!(host, "127.0.0.1" | "localhost") {
        return Ok(url.to_string());
    }
    let port: u16 = port.parse().map_err(|_| format!("bad port in {url}"))?;
    forward(gateway, port)?;
    Ok(format!("http://{gateway}:{port}{path}"))
}

/// Forwarders running, by (gateway, port): one each, for the agent's life
/// (a network made again on the same subnet finds its forwarder there).
static FORWARDERS: Mutex<Option<HashSet<(Ipv4Addr, u16)>>> = Mutex::new(None);

fn forward(gateway: Ipv4Addr, port: u16) -> Result<(), String> {
    let mut running = FORWARDERS.lock().unwrap_or_else(|e| e.into_inner());
    let running = running.get_or_insert_with(HashSet::new);
    if running.contains(&(gateway, port)) {
        return Ok(());
    }
    let listener = match TcpListener::bind((gateway, port)) {
        Ok(listener) => listener,
        // The service listens on every address: the gateway's reaches it.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            running.insert((gateway, port));
            return Ok(());
        }
        Err(e) => {
            return Err(format!(
                "cannot listen on {gateway}:{port} for the service: {e}"
            ));
        }
    };
    running.insert((gateway, port));
    std::thread::spawn(move || {
        for inside in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if let Ok(outside) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                    crate::relay::pipe(inside, outside);
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_go_through_the_gateway_and_others_stay() {
        let gw = Ipv4Addr::LOCALHOST;
        let listener = TcpListener::bind((gw, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert_eq!(
            url_inside(&format!("http://localhost:{port}/api"), gw).unwrap(),
            format!("http://127.0.0.1:{port}/api")
        );
        assert_eq!(
            url_inside("https://osmo.example.com/api", gw).unwrap(),
            "https://osmo.example.com/api"
        );
        assert_eq!(
            url_inside("http://10.0.0.5:8000", gw).unwrap(),
            "http://10.0.0.5:8000"
        );
        assert_eq!(name("wf 1"), "osmo-wf_1");
    }
}
