//! UPnP-IGD, the part port mapping needs: find the gateway's WANIPConnection (or
//! WANPPPConnection) service and ask it to add, renew and delete one UDP port mapping.
//!
//! Written here rather than taken from `igd-next`: that crate turns on hyper's HTTP/2
//! client for its async API, which cost the library about 0.6 MB (`docs/benchmarks.md`),
//! and pulls in two more HTTP clients and an XML tree. This module speaks the four SOAP
//! actions over the reqwest client the engine already links, and reads the few elements
//! it needs from the device description and the answers. The search goes to the
//! gateway's unicast address only, and a description or control URL on another host is
//! refused. Tested against miniupnpd in the lab (`lab/tests/portmap.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use reqwest::Url;

use crate::error::chain;

/// The services that map ports, in the order we take them when a device offers more
/// than one. IGDv2's WANIPConnection:2 also knows `AddAnyPortMapping`.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// The most we read of a description or an answer: a router's are a few KiB.
const MAX_BODY: usize = 64 * 1024;

/// How often the search is sent again while no answer came (UDP may be lost).
const SEARCH_RESEND: Duration = Duration::from_millis(1000);

/// How many random ports are tried when the router has no `AddAnyPortMapping`.
const RANDOM_PORT_TRIES: usize = 8;

/// The UPnP error a router answers when a port is taken by another client.
const CONFLICT: u16 = 718;
/// The UPnP error of a router whose port is taken by another mechanism (IGDv2).
const CONFLICT_OTHER: u16 = 729;

/// Why a UPnP step failed.
#[derive(Debug)]
pub(super) enum UpnpError {
    /// The router answered the action with a UPnP error (`errorCode`).
    Refused {
        /// The action, e.g. `AddPortMapping`.
        action: &'static str,
        /// The UPnP error code (718: the port is taken, 401: no such action...).
        code: u16,
        /// The router's `errorDescription`.
        description: String,
    },
    /// Anything else: no answer, HTTP, a description without a service.
    Other(String),
}

impl std::fmt::Display for UpnpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpnpError::Refused {
                action,
                code,
                description,
            } => write!(f, "{action} refused: UPnP error {code} ({description})"),
            UpnpError::Other(s) => f.write_str(s),
        }
    }
}

impl From<String> for UpnpError {
    fn from(s: String) -> Self {
        UpnpError::Other(s)
    }
}

/// A gateway's port mapping service, found by [`search`].
pub(super) struct Igd {
    http: reqwest::Client,
    control: Url,
    service: &'static str,
}

/// How long one HTTP request to the router may take: a router on the LAN answers in
/// milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `request` (an SSDP M-SEARCH) from `local` to `gateway`'s SSDP port, again every
/// second, until a device answers with the URL of its description; reads the
/// description and returns its first port mapping service that tells its public
/// address, with that address. Only an answer from the gateway, pointing at the
/// gateway, counts. Runs until it succeeds or fails: the caller bounds it.
pub(super) async fn search(
    gateway: Ipv4Addr,
    local: Ipv4Addr,
    request: &[u8],
) -> Result<(Igd, IpAddr), String> {
    let socket = tokio::net::UdpSocket::bind((local, 0))
        .await
        .map_err(|e| format!("cannot bind a search socket on {local}: {e}"))?;
    let to = SocketAddr::from((gateway, super::SSDP_PORT));
    let mut buf = [0u8; 2048];
    // Sent on the tick only: an answer we cannot use does not trigger another search.
    let mut resend = tokio::time::interval(SEARCH_RESEND);
    let location = loop {
        tokio::select! {
            _ = resend.tick() => {
                socket
                    .send_to(request, to)
                    .await
                    .map_err(|e| format!("cannot send the search to {to}: {e}"))?;
            }
            received = socket.recv_from(&mut buf) => {
                let (n, from) = received.map_err(|e| format!("search: {e}"))?;
                if from.ip() != IpAddr::V4(gateway) {
                    continue;
                }
                if let Some(location) = ssdp_location(&buf[..n]) {
                    break location;
                }
            }
        }
    };
    describe(gateway, &location).await
}

/// Reads the description at `location` (from the gateway's search answer) and returns
/// its first port mapping service that tells its public address, with that address.
async fn describe(gateway: Ipv4Addr, location: &str) -> Result<(Igd, IpAddr), String> {
    let location = Url::parse(location)
        .map_err(|e| format!("the search answer's location {location:?}: {e}"))?;
    on_gateway("the search answer's location", &location, gateway)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        // A redirect could send the requests anywhere; the gateway must answer itself.
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("stunfwd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {}", chain(&e)))?;
    let what = format!("the description {location}");
    let response = http
        .get(location.clone())
        .send()
        .await
        .map_err(|e| format!("{what}: {}", chain(&e)))?;
    let status = response.status();
    let description = read_body(&what, response).await?;
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}"));
    }
    let mut why = Vec::new();
    for (service, control) in find_services(&description, &location)? {
        on_gateway(&format!("{service}'s controlURL"), &control, gateway)?;
        let igd = Igd {
            http: http.clone(),
            control,
            service,
        };
        // A router may list a service that is not connected (a DSL router's unused
        // WANIPConnection beside its PPP one): the one that knows its address wins.
        match igd.external_ip().await {
            Ok(ip) => return Ok((igd, ip)),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(why.join("; "))
}

impl Igd {
    /// The router's public address (`GetExternalIPAddress`).
    pub(super) async fn external_ip(&self) -> Result<IpAddr, UpnpError> {
        let answer = self.call("GetExternalIPAddress", &[]).await?;
        let text = element_text(&answer, "NewExternalIPAddress").ok_or_else(|| {
            UpnpError::Other(
                "the answer to GetExternalIPAddress has no NewExternalIPAddress".into(),
            )
        })?;
        match text.trim().parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => Ok(ip),
            // miniupnpd says 0.0.0.0 while its WAN interface has no address.
            _ => Err(UpnpError::Other(format!(
                "GetExternalIPAddress answered {text:?}, not a usable IP address"
            ))),
        }
    }

    /// Maps public UDP port `external` to `internal` for `lease` seconds. A router that
    /// keeps only permanent mappings refuses (error 725): one we failed to delete would
    /// forward the port for good, to whatever host later has our LAN address.
    pub(super) async fn add_port(
        &self,
        external: u16,
        internal: SocketAddrV4,
        lease: u32,
        description: &str,
    ) -> Result<(), UpnpError> {
        let args = mapping_args(external, internal, lease, description);
        self.call("AddPortMapping", &args).await.map(drop)
    }

    /// Maps any free public UDP port to `internal`: `AddAnyPortMapping` on an IGDv2
    /// service, otherwise a few random ports in turn. Returns the port.
    pub(super) async fn add_any_port(
        &self,
        internal: SocketAddrV4,
        lease: u32,
        description: &str,
    ) -> Result<u16, UpnpError> {
        if self.service == SERVICES[0] {
            let args = mapping_args(internal.port(), internal, lease, description);
            match self.call("AddAnyPortMapping", &args).await {
                Ok(answer) => {
                    let port = element_text(&answer, "NewReservedPort")
                        .and_then(|p| p.trim().parse::<u16>().ok())
                        .filter(|p| *p != 0);
                    return port.ok_or_else(|| {
                        UpnpError::Other("AddAnyPortMapping answered no NewReservedPort".into())
                    });
                }
                Err(e) => tracing::debug!(error = %e, "UPnP: AddAnyPortMapping; trying ports"),
            }
        }
        let mut last = UpnpError::Other("no port tried".into());
        for _ in 0..RANDOM_PORT_TRIES {
            let port = rand::random_range(1024..=u16::MAX);
            match self.add_port(port, internal, lease, description).await {
                Ok(()) => return Ok(port),
                // Taken: another port. Anything else would repeat for every port.
                Err(
                    e @ UpnpError::Refused {
                        code: CONFLICT | CONFLICT_OTHER,
                        ..
                    },
                ) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Deletes the mapping of public UDP port `external`.
    pub(super) async fn remove_port(&self, external: u16) -> Result<(), UpnpError> {
        let args = [
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", external.to_string()),
            ("NewProtocol", "UDP".to_string()),
        ];
        self.call("DeletePortMapping", &args).await.map(drop)
    }

    /// Calls `action` on the service; the answer's body on success.
    async fn call(
        &self,
        action: &'static str,
        args: &[(&str, String)],
    ) -> Result<String, UpnpError> {
        let response = self
            .http
            .post(self.control.clone())
            .header("Content-Type", "text/xml; charset=\"utf-8\"")
            .header("SOAPAction", format!("\"{}#{action}\"", self.service))
            .body(soap_request(self.service, action, args))
            .send()
            .await
            .map_err(|e| format!("{action}: {}", chain(&e)))?;
        let status = response.status();
        let body = read_body(action, response).await?;
        // A fault is a fault whatever the status (some routers send theirs with 200).
        if let Some(code) = element_text(&body, "errorCode").and_then(|c| c.trim().parse().ok()) {
            return Err(UpnpError::Refused {
                action,
                code,
                description: element_text(&body, "errorDescription")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            });
        }
        if status.is_success() {
            Ok(body)
        } else {
            Err(UpnpError::Other(format!("{action}: HTTP {status}")))
        }
    }
}

/// The arguments of `AddPortMapping` and `AddAnyPortMapping`: public UDP port
/// `external` to `internal`, from any remote host.
fn mapping_args(
    external: u16,
    internal: SocketAddrV4,
    lease: u32,
    description: &str,
) -> [(&'static str, String); 8] {
    [
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external.to_string()),
        ("NewProtocol", "UDP".to_string()),
        ("NewInternalPort", internal.port().to_string()),
        ("NewInternalClient", internal.ip().to_string()),
        ("NewEnabled", "1".to_string()),
        ("NewPortMappingDescription", description.to_string()),
        ("NewLeaseDuration", lease.to_string()),
    ]
}

/// Refuses a URL (`what`) whose host is not the gateway: a router must not send us to
/// another host on the LAN, or anywhere else.
fn on_gateway(what: &str, url: &Url, gateway: Ipv4Addr) -> Result<(), String> {
    let host = url.host_str().and_then(|h| h.parse::<Ipv4Addr>().ok());
    match (url.scheme(), host) {
        ("http", Some(ip)) if ip == gateway => Ok(()),
        _ => Err(format!(
            "{what} points at {url}, not at the gateway {gateway}"
        )),
    }
}

/// The body of the answer to `what`, at most [`MAX_BODY`] bytes, bytes that are not
/// UTF-8 replaced (a router's name in Latin-1 must not cost us its service).
async fn read_body(what: &str, mut response: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{what}: {}", chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("{what}: an answer over {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The `LOCATION` header of an SSDP answer (`HTTP/1.1 200 OK`), case-insensitively.
fn ssdp_location(answer: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    let mut lines = text.lines();
    let status = lines.next()?;
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return None;
    }
    lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_string())
    })
}

/// The services of [`SERVICES`]' types in a device description, in that order, each
/// with its control URL resolved against the description's `URLBase` or, without one,
/// its own URL.
fn find_services(description: &str, location: &Url) -> Result<Vec<(&'static str, Url)>, String> {
    let base = match element_text(description, "URLBase") {
        Some(b) if !b.trim().is_empty() => {
            Url::parse(b.trim()).map_err(|e| format!("URLBase {b:?}: {e}"))?
        }
        _ => location.clone(),
    };
    let services: Vec<&str> = elements(description, "service").collect();
    let mut found = Vec::new();
    for wanted in SERVICES {
        for service in &services {
            if element_text(service, "serviceType").is_none_or(|t| t.trim() != wanted) {
                continue;
            }
            let control = element_text(service, "controlURL").unwrap_or_default();
            if control.trim().is_empty() {
                return Err(format!("{wanted} has no controlURL"));
            }
            let control = base
                .join(control.trim())
                .map_err(|e| format!("{wanted}'s controlURL {control:?}: {e}"))?;
            found.push((wanted, control));
        }
    }
    if found.is_empty() {
        return Err(
            "the gateway's description lists no WANIPConnection or WANPPPConnection".into(),
        );
    }
    Ok(found)
}

/// A SOAP envelope calling `action` of `service` with `args` (escaped).
fn soap_request(service: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut body = String::from(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>",
    );
    body.push_str(&format!("<u:{action} xmlns:u=\"{service}\">"));
    for (name, value) in args {
        body.push_str(&format!("<{name}>{}</{name}>", escape(value)));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    body
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The contents of every element named `name` (any namespace prefix) in `xml`, in
/// order, each up to the first close tag of that name. Enough for the flat, known documents UPnP
/// devices send; not an XML parser (no CDATA, no comments holding tags).
fn elements<'a>(xml: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut rest = xml;
    std::iter::from_fn(move || loop {
        let start = rest.find('<')?;
        let after = &rest[start + 1..];
        let tag_end = after.find('>')?;
        let tag = &after[..tag_end];
        rest = &after[tag_end + 1..];
        if tag.starts_with('/') || tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let tag_name = tag
            .split(|c: char| c.is_ascii_whitespace() || c == '/')
            .next()?;
        if local_name(tag_name) != name {
            continue;
        }
        if tag.ends_with('/') {
            return Some("");
        }
        // The matching close tag: `</name>` or `</prefix:name>`.
        let mut search = 0;
        while let Some(i) = rest[search..].find("</") {
            let close = &rest[search + i + 2..];
            let close_name = close.split('>').next().unwrap_or_default().trim();
            if local_name(close_name) == name {
                let content = &rest[..search + i];
                rest = &close[close.find('>').map_or(close.len(), |j| j + 1)..];
                return Some(content);
            }
            search += i + 2;
        }
        return None;
    })
}

/// The text of the first element named `name`, with XML's five entities decoded.
fn element_text(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).next().map(unescape)
}

fn local_name(tag: &str) -> &str {
    tag.rsplit(':').next().unwrap_or(tag)
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// miniupnpd 2.3's description, shortened: an IGDv1 device with the services
    /// nested two devices deep and no URLBase.
    const DESCRIPTION: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<serviceId>urn:upnp-org:serviceId:L3Forwarding1</serviceId><controlURL>/ctl/L3F</controlURL>
<eventSubURL>/evt/L3F</eventSubURL><SCPDURL>/L3F.xml</SCPDURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType>
<controlURL>/ctl/CmnIfCfg</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><controlURL>/ctl/IPConn</controlURL>
<eventSubURL>/evt/IPConn</eventSubURL><SCPDURL>/WANIPCn.xml</SCPDURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>"#;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn finds_the_connection_service_and_resolves_its_control_url() {
        let location = url("http://10.0.0.1:41234/rootDesc.xml");
        let found = find_services(DESCRIPTION, &location).expect("service");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, SERVICES[1]);
        assert_eq!(found[0].1.as_str(), "http://10.0.0.1:41234/ctl/IPConn");

        // IGDv2 first, then v1, then PPP, whatever the document's order; URLBase wins
        // over the location; prefixes and entities are read.
        let v2 = "<d:root xmlns:d=\"x\"><d:URLBase>http://10.0.0.1:5000/</d:URLBase>\
            <d:service><d:serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</d:serviceType>\
            <d:controlURL>/ppp</d:controlURL></d:service>\
            <d:service><d:serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</d:serviceType>\
            <d:controlURL>/ip2?a=1&amp;b=2</d:controlURL></d:service></d:root>";
        let found = find_services(v2, &location).expect("service");
        let found: Vec<(&str, &str)> = found.iter().map(|(s, u)| (*s, u.as_str())).collect();
        assert_eq!(
            found,
            [
                (SERVICES[0], "http://10.0.0.1:5000/ip2?a=1&b=2"),
                (SERVICES[2], "http://10.0.0.1:5000/ppp"),
            ]
        );

        let none = "<root><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1\
            </serviceType><controlURL>/x</controlURL></service></root>";
        let err = find_services(none, &location).expect_err("no service");
        assert!(err.contains("no WANIPConnection"), "{err}");
        for no_control in ["", "<controlURL> </controlURL>", "<controlURL/>"] {
            let d = format!(
                "<root><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1\
                 </serviceType>{no_control}</service></root>"
            );
            let err = find_services(&d, &location).expect_err(no_control);
            assert!(err.contains("has no controlURL"), "{err}");
        }
    }

    #[test]
    fn refuses_urls_off_the_gateway() {
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        assert!(on_gateway("x", &url("http://10.0.0.1:5000/x"), gw).is_ok());
        for bad in [
            "http://10.0.0.2:5000/x",
            "http://gateway.lan/x",
            "https://10.0.0.1/x",
            "http://[::1]/x",
            "file:///etc/passwd",
        ] {
            let err = on_gateway("the location", &url(bad), gw).expect_err(bad);
            assert!(
                err.starts_with("the location points at")
                    && err.ends_with("not at the gateway 10.0.0.1"),
                "{err}"
            );
        }
    }

    #[test]
    fn reads_the_location_of_an_ssdp_answer() {
        let answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
            USN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\n\
            location: http://10.0.0.1:41234/rootDesc.xml\r\n\r\n";
        assert_eq!(
            ssdp_location(answer).as_deref(),
            Some("http://10.0.0.1:41234/rootDesc.xml")
        );
        assert_eq!(
            ssdp_location(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n"),
            None
        );
        assert_eq!(ssdp_location(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n"), None);
        assert_eq!(ssdp_location(b"\xff\xfe"), None);
    }

    #[test]
    fn reads_answers_and_errors() {
        let answer = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">\
            <s:Body><u:GetExternalIPAddressResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
            <NewExternalIPAddress>203.0.113.9</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        assert_eq!(
            element_text(answer, "NewExternalIPAddress").as_deref(),
            Some("203.0.113.9")
        );
        let fault = "<s:Envelope><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>\
            <detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode>\
            <errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        assert_eq!(element_text(fault, "errorCode").as_deref(), Some("718"));
        assert_eq!(
            element_text(fault, "errorDescription").as_deref(),
            Some("ConflictInMappingEntry")
        );
        // An empty element, a missing one, an unclosed one.
        assert_eq!(element_text("<a><b/></a>", "b").as_deref(), Some(""));
        assert_eq!(element_text("<a><b>1</b></a>", "c"), None);
        assert_eq!(element_text("<a><b>1</a>", "b"), None);
        // Nested elements of one name: the outer's contents.
        let nested: Vec<&str> = elements("<d><d>x</d></d><d>y</d>", "d").collect();
        assert_eq!(nested[0], "<d>x");
    }

    #[test]
    fn a_request_escapes_its_arguments() {
        let body = soap_request(
            SERVICES[1],
            "AddPortMapping",
            &[("NewPortMappingDescription", "a<b>&\"c\"".into())],
        );
        assert!(body.contains(
            "<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">"
        ));
        assert!(body.contains(
            "<NewPortMappingDescription>a&lt;b&gt;&amp;&quot;c&quot;</NewPortMappingDescription>"
        ));
        assert_eq!(
            element_text(&body, "NewPortMappingDescription").as_deref(),
            Some("a<b>&\"c\"")
        );
    }
}

/// The HTTP side against a router on loopback that behaves as routers in the field do,
/// badly included (miniupnpd itself is in the lab: `lab/tests/portmap.rs`).
#[cfg(test)]
mod router_tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::IntoResponse;

    /// What the router answers an action: status and body.
    type Script = dyn Fn(&str, &str, &str) -> (StatusCode, String) + Send + Sync;

    struct Router {
        gateway: Ipv4Addr,
        base: String,
        /// Every request: path, SOAP action (or `GET`), body.
        seen: Arc<Mutex<Vec<(String, String, String)>>>,
    }

    fn ok(action: &str, inner: &str) -> (StatusCode, String) {
        (
            StatusCode::OK,
            format!("<s:Envelope><s:Body><u:{action}Response>{inner}</u:{action}Response></s:Body></s:Envelope>"),
        )
    }

    fn fault(code: u16, status: StatusCode) -> (StatusCode, String) {
        (
            status,
            format!("<s:Envelope><s:Body><s:Fault><detail><UPnPError><errorCode>{code}</errorCode>\
                     <errorDescription>Error{code}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"),
        )
    }

    /// A router on 127.0.0.1 whose description lists `services` ((type, path)) and
    /// whose control URLs answer with `script(path, action, body)`.
    async fn router(services: &[(&str, &str)], script: Arc<Script>) -> Router {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let list: String = services
            .iter()
            .map(|(t, p)| {
                format!(
                    "<service><serviceType>{t}</serviceType><controlURL>{p}</controlURL></service>"
                )
            })
            .collect();
        let description =
            format!("<root><device><serviceList>{list}</serviceList></device></root>");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: Uri, headers: HeaderMap, body: String| {
                let (description, script, log) = (description.clone(), script.clone(), log.clone());
                async move {
                    let path = uri.path().to_string();
                    let action = headers
                        .get("soapaction")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim_matches('"').split('#').nth(1))
                        .unwrap_or(method.as_str())
                        .to_string();
                    log.lock()
                        .expect("log")
                        .push((path.clone(), action.clone(), body.clone()));
                    match path.as_str() {
                        "/desc.xml" => (StatusCode::OK, description).into_response(),
                        "/elsewhere.xml" => (
                            StatusCode::FOUND,
                            [("location", format!("http://127.0.0.2:{port}/desc.xml"))],
                        )
                            .into_response(),
                        _ => script(&path, &action, &body).into_response(),
                    }
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Router {
            gateway: Ipv4Addr::LOCALHOST,
            base: format!("http://127.0.0.1:{port}"),
            seen,
        }
    }

    impl Router {
        /// The router's service, as the search would find it.
        async fn igd(&self) -> Result<(Igd, IpAddr), String> {
            describe(self.gateway, &format!("{}/desc.xml", self.base)).await
        }

        /// How many requests asked for `action`.
        fn asked(&self, action: &str) -> usize {
            let seen = self.seen.lock().expect("log");
            seen.iter().filter(|(_, a, _)| a == action).count()
        }
    }

    fn ip_answer() -> Arc<Script> {
        Arc::new(|_, action, _| match action {
            "GetExternalIPAddress" => ok(
                action,
                "<NewExternalIPAddress>203.0.113.9</NewExternalIPAddress>",
            ),
            _ => ok(action, ""),
        })
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let r = router(&[(SERVICES[1], "/ip")], ip_answer()).await;
        let err = describe(r.gateway, &format!("{}/elsewhere.xml", r.base))
            .await
            .err()
            .expect("a redirect must fail");
        assert!(err.contains("HTTP 302"), "{err}");
        let seen = r.seen.lock().expect("log").clone();
        assert_eq!(seen.len(), 1, "one request, not followed: {seen:?}");
    }

    #[tokio::test]
    async fn the_service_that_knows_its_address_wins() {
        // A DSL router: an unconnected WANIPConnection (no address, then 0.0.0.0) beside
        // the PPP connection that works.
        for unconnected in [
            fault(501, StatusCode::INTERNAL_SERVER_ERROR),
            ok(
                "GetExternalIPAddress",
                "<NewExternalIPAddress>0.0.0.0</NewExternalIPAddress>",
            ),
        ] {
            let script: Arc<Script> = Arc::new(move |path, action, _| match (path, action) {
                ("/ip", _) => unconnected.clone(),
                ("/ppp", "GetExternalIPAddress") => ok(
                    action,
                    "<NewExternalIPAddress>198.51.100.4</NewExternalIPAddress>",
                ),
                _ => ok(action, ""),
            });
            let r = router(&[(SERVICES[2], "/ppp"), (SERVICES[1], "/ip")], script).await;
            let (igd, ip) = r.igd().await.expect("igd");
            assert_eq!(ip, "198.51.100.4".parse::<IpAddr>().expect("ip"));
            assert_eq!(igd.service, SERVICES[2]);
        }
        // None works: both reasons.
        let script: Arc<Script> = Arc::new(|_, _, _| fault(501, StatusCode::INTERNAL_SERVER_ERROR));
        let r = router(&[(SERVICES[1], "/ip"), (SERVICES[2], "/ppp")], script).await;
        let err = r.igd().await.err().expect("no igd");
        assert_eq!(
            err.matches("GetExternalIPAddress refused: UPnP error 501")
                .count(),
            2,
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_control_url_off_the_gateway_is_refused_before_any_request() {
        let r = router(&[(SERVICES[1], "http://127.0.0.2:1/ip")], ip_answer()).await;
        let err = r.igd().await.err().expect("refused");
        assert!(
            err.contains("controlURL points at http://127.0.0.2:1/ip"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn faults_are_faults_whatever_the_status_and_725_is_not_retried() {
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 4000);
        for status in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR] {
            let script: Arc<Script> = Arc::new(move |_, action, _| match action {
                "AddPortMapping" => fault(725, status),
                _ => ip_answer()("/ip", action, ""),
            });
            let r = router(&[(SERVICES[1], "/ip")], script).await;
            let (igd, _) = r.igd().await.expect("igd");
            let err = igd
                .add_port(4000, local, 7200, "stunfwd")
                .await
                .expect_err("725");
            assert!(matches!(err, UpnpError::Refused { code: 725, .. }), "{err}");
            assert_eq!(
                err.to_string(),
                "AddPortMapping refused: UPnP error 725 (Error725)"
            );
            let adds = r.asked("AddPortMapping");
            assert_eq!(adds, 1, "a permanent mapping must not be asked for");
        }
    }

    #[tokio::test]
    async fn any_port_tries_free_ports_on_conflicts_only() {
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 4000);
        // IGDv1: two conflicts, then a port is free.
        let tries = Arc::new(Mutex::new(0));
        let t = tries.clone();
        let script: Arc<Script> = Arc::new(move |_, action, body| match action {
            "AddPortMapping" => {
                assert!(
                    body.contains(
                        "<NewInternalClient>10.0.0.2</NewInternalClient><NewEnabled>1</NewEnabled>"
                    ),
                    "{body}"
                );
                let mut n = t.lock().expect("tries");
                *n += 1;
                if *n <= 2 {
                    fault(
                        if *n == 1 { 718 } else { 729 },
                        StatusCode::INTERNAL_SERVER_ERROR,
                    )
                } else {
                    ok(action, "")
                }
            }
            _ => ip_answer()("/ip", action, ""),
        });
        let r = router(&[(SERVICES[1], "/ip")], script).await;
        let (igd, _) = r.igd().await.expect("igd");
        let port = igd
            .add_any_port(local, 7200, "stunfwd")
            .await
            .expect("a port");
        assert!(port >= 1024);
        let seen = r.seen.lock().expect("log").clone();
        let last = &seen.last().expect("requests").2;
        assert!(
            last.contains(&format!("<NewExternalPort>{port}</NewExternalPort>")),
            "{last}"
        );
        assert_eq!(*tries.lock().expect("tries"), 3);

        // Another refusal would repeat for every port: one try.
        let script: Arc<Script> = Arc::new(|_, action, _| match action {
            "AddPortMapping" => fault(606, StatusCode::INTERNAL_SERVER_ERROR),
            _ => ip_answer()("/ip", action, ""),
        });
        let r = router(&[(SERVICES[1], "/ip")], script).await;
        let (igd, _) = r.igd().await.expect("igd");
        let err = igd
            .add_any_port(local, 7200, "stunfwd")
            .await
            .expect_err("606");
        assert!(matches!(err, UpnpError::Refused { code: 606, .. }), "{err}");
        let adds = r.asked("AddPortMapping");
        assert_eq!(adds, 1);

        // IGDv2: AddAnyPortMapping's reserved port.
        let script: Arc<Script> = Arc::new(|_, action, _| match action {
            "AddAnyPortMapping" => ok(action, "<NewReservedPort>40001</NewReservedPort>"),
            _ => ip_answer()("/ip", action, ""),
        });
        let r = router(&[(SERVICES[0], "/ip")], script).await;
        let (igd, _) = r.igd().await.expect("igd");
        assert_eq!(
            igd.add_any_port(local, 7200, "stunfwd")
                .await
                .expect("port"),
            40001
        );
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused() {
        let script: Arc<Script> = Arc::new(|_, _, _| (StatusCode::OK, "x".repeat(MAX_BODY + 1)));
        let r = router(&[(SERVICES[1], "/ip")], script).await;
        let err = r.igd().await.err().expect("refused");
        assert!(
            err.contains("GetExternalIPAddress: an answer over 65536 bytes"),
            "{err}"
        );
    }
}
