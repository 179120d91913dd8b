//! A small WebDriver (W3C) client for headless Chromium through ChromeDriver, and a check of the
//! ops console served by cloud-ingest that any test — or the lead against a running demo — can
//! call: [`check_console`].
//!
//! No HTTP library: ChromeDriver and cloud-ingest are both on the loopback interface, spoken to
//! with a few lines of HTTP/1.1 ([`http`]). The binaries are `$FLOWSQUARE_CHROMIUM` /
//! `$FLOWSQUARE_CHROMEDRIVER`, else `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian
//! packages `chromium`, `chromium-driver`; `scripts/test` installs them).
//!
//! ```no_run
//! use flowsquare_tests::browser::{check_console, ConsoleCheck};
//! let report = check_console(&ConsoleCheck {
//!     base_url: "http://127.0.0.1:8080".into(),
//!     token: std::env::var("TOKEN").unwrap(),
//!     screenshot_dir: "target/console-screenshots".into(),
//!     expect_data: true,
//! }).expect("every console page loads cleanly");
//! for p in &report.pages { println!("{p:?}"); }
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Value::Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 request to `http://host:port/path` (`Connection: close`; chunked answers are
/// decoded). Plain HTTP only: meant for loopback services.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Answer, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes)
        .map_err(|e| format!("{method} {url}: {e}"))?;
    // Read the header, then exactly the body it announces (servers may keep the connection
    // open despite `Connection: close`).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{method} {url}: connection closed before the header"
            ));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {url}: bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let chunked = value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length: Option<usize> = value("content-length").and_then(|v| v.parse().ok());
    let mut body = raw[split + 4..].to_vec();
    let complete = |b: &[u8]| match (chunked, length) {
        (true, _) => dechunk(b).is_some(),
        (false, Some(n)) => b.len() >= n,
        (false, None) => false,
    };
    let no_body = method == "HEAD" || status == 204 || status == 304;
    while !no_body && !complete(&body) {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        if n == 0 {
            break; // closed: the body is what arrived
        }
        body.extend_from_slice(&buf[..n]);
    }
    if chunked {
        body = dechunk(&body).ok_or_else(|| format!("{method} {url}: bad chunked body"))?;
    } else if let Some(n) = length {
        body.truncate(n);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_txt = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Chromium and ChromeDriver, if both are installed.
pub fn find() -> Option<(PathBuf, PathBuf)> {
    let pick = |env: &str, default: &str| {
        let p = std::env::var_os(env)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default));
        p.exists().then_some(p)
    };
    Some((
        pick("FLOWSQUARE_CHROMIUM", "/usr/bin/chromium")?,
        pick("FLOWSQUARE_CHROMEDRIVER", "/usr/bin/chromedriver")?,
    ))
}

/// A running ChromeDriver (killed on drop).
pub struct Driver {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    chromium: PathBuf,
}

impl Driver {
    /// Start ChromeDriver on a free loopback port and wait until it reports ready.
    pub fn start(chromium: &Path, chromedriver: &Path) -> Result<Driver, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("free port: {e}"))?;
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", chromedriver.display()))?;
        let d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            chromium: chromium.to_owned(),
        };
        let ready = crate::wait_until(Duration::from_secs(20), || {
            http(
                "GET",
                &format!("{}/status", d.url),
                &[],
                None,
                Duration::from_secs(2),
            )
            .map(|a| a.json()["value"]["ready"] == json!(true))
            .unwrap_or(false)
        });
        if !ready {
            return Err(format!(
                "chromedriver on port {port} did not become ready in 20 s"
            ));
        }
        Ok(d)
    }

    /// A new headless browser session.
    pub fn session(&self, width: u32, height: u32) -> Result<Session, String> {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                         format!("--window-size={width},{height}")]
            },
            "goog:loggingPrefs": { "browser": "ALL" }
        } } });
        let v = call(&format!("{}/session", self.url), "POST", Some(&caps), 60)?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("new session: no sessionId in {v}"))?
            .to_owned();
        Ok(Session {
            url: format!("{}/session/{id}", self.url),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver command; returns its `value`, or the WebDriver error as text.
fn call(url: &str, method: &str, body: Option<&Value>, timeout_s: u64) -> Result<Value, String> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let a = http(
        method,
        url,
        &[],
        bytes.as_deref(),
        Duration::from_secs(timeout_s),
    )?;
    let v = a.json();
    if a.status != 200 {
        return Err(format!(
            "{method} {url}: {} {} {}",
            a.status, v["value"]["error"], v["value"]["message"]
        ));
    }
    Ok(v["value"].clone())
}

/// A browser session (deleted on drop).
pub struct Session {
    url: String,
}

impl Session {
    /// Load a URL (waits for the load event).
    pub fn navigate(&self, url: &str) -> Result<(), String> {
        call(
            &format!("{}/url", self.url),
            "POST",
            Some(&json!({ "url": url })),
            60,
        )
        .map(|_| ())
    }

    /// Run a script (`return …` gives the value).
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value, String> {
        call(
            &format!("{}/execute/sync", self.url),
            "POST",
            Some(&json!({ "script": script, "args": args })),
            60,
        )
    }

    /// Poll `script` until it returns true (or `timeout`).
    pub fn wait_for(&self, script: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.execute(script, &[])? == json!(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for: {script}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resize the window.
    pub fn set_window(&self, width: u32, height: u32) -> Result<(), String> {
        call(
            &format!("{}/window/rect", self.url),
            "POST",
            Some(&json!({ "width": width, "height": height })),
            30,
        )
        .map(|_| ())
    }

    /// Save a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let v = call(&format!("{}/screenshot", self.url), "GET", None, 60)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .map_err(|e| format!("screenshot: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The browser's console log entries since the last call (ChromeDriver's log endpoint;
    /// empty if this ChromeDriver does not offer it): `(level, message)`.
    pub fn browser_log(&self) -> Vec<(String, String)> {
        let body = json!({ "type": "browser" });
        let v = call(&format!("{}/se/log", self.url), "POST", Some(&body), 30)
            .or_else(|_| call(&format!("{}/log", self.url), "POST", Some(&body), 30))
            .unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_owned(),
                    e["message"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = call(&self.url, "DELETE", None, 30);
    }
}

/// What [`check_console`] checks.
#[derive(Debug, Clone)]
pub struct ConsoleCheck {
    /// The cloud-ingest API, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// A bearer token (its role decides what is shown).
    pub token: String,
    /// Where `<page>.png` screenshots go.
    pub screenshot_dir: PathBuf,
    /// The database holds data: the pages that draw charts must draw points (tags, trucks,
    /// KPIs) and the reconciliation drill-down is followed. False for an empty database: every
    /// page must still load without errors.
    pub expect_data: bool,
}

/// One page as loaded.
#[derive(Debug, Clone)]
pub struct PageReport {
    /// Page name (the screenshot's file stem).
    pub name: String,
    /// The console route loaded.
    pub route: String,
    /// Data points of each chart on the page.
    pub chart_points: Vec<u64>,
    /// Milliseconds from navigation to `ready`.
    pub load_ms: u128,
    /// The screenshot.
    pub screenshot: PathBuf,
}

/// The result of a check.
#[derive(Debug, Clone)]
pub struct ConsoleReport {
    /// The token's role as the console saw it.
    pub role: String,
    /// Every page loaded, in order.
    pub pages: Vec<PageReport>,
}

/// The console's pages and whether each must draw a chart when there is data.
pub const PAGES: [(&str, bool); 7] = [
    ("fleet", false),
    ("tags", true),
    ("freshness", false),
    ("recon", false),
    ("trucks", true),
    ("kpis", true),
    ("alerts", false),
];

/// Start ChromeDriver and a session, sign in and check every page: see [`check_with`].
pub fn check_console(c: &ConsoleCheck) -> Result<ConsoleReport, String> {
    let (chromium, chromedriver) = find()
        .ok_or("chromium and chromedriver are not installed (Debian: chromium chromium-driver)")?;
    let driver = Driver::start(&chromium, &chromedriver)?;
    let s = driver.session(1440, 1000)?;
    check_with(&s, c)
}

/// Sign in with the token through the login form, then load every page of [`PAGES`] (and the
/// reconciliation's tank drill-down when there is data): each must reach `ready` with no script
/// error, no `console.error` and no SEVERE browser log entry; charts must have points where
/// expected; a full-page screenshot of each is saved.
pub fn check_with(s: &Session, c: &ConsoleCheck) -> Result<ConsoleReport, String> {
    let base = c.base_url.trim_end_matches('/');
    login(s, base, &c.token)?;
    let role = s
        .execute(
            "return document.getElementById('who-role').textContent",
            &[],
        )?
        .as_str()
        .unwrap_or("")
        .to_owned();
    let mut pages = Vec::new();
    for (name, chart) in PAGES {
        pages.push(load_page(
            s,
            name,
            &format!("#/{name}"),
            chart && c.expect_data,
            c,
        )?);
        if name == "recon" && c.expect_data {
            let date = s.execute(
                "const e = document.querySelector('select.date'); return e ? e.value : null",
                &[],
            )?;
            let date = date
                .as_str()
                .ok_or("reconciliation page: no day to drill down into")?
                .to_owned();
            for view in ["tanks", "meters", "trips"] {
                pages.push(load_page(
                    s,
                    &format!("recon-{view}"),
                    &format!("#/recon/{date}/{view}"),
                    false,
                    c,
                )?);
                let rows = s.execute(
                    "return document.querySelectorAll('#page table tbody tr').length",
                    &[],
                )?;
                if rows.as_u64().unwrap_or(0) == 0 {
                    return Err(format!(
                        "reconciliation {date} {view}: no rows in the drill-down"
                    ));
                }
            }
        }
    }
    Ok(ConsoleReport { role, pages })
}

/// Open the console and sign in with `token` through the form.
pub fn login(s: &Session, base: &str, token: &str) -> Result<(), String> {
    // Clear the tab's session from a page of the origin that makes no API calls.
    s.navigate(&format!("{base}/console/favicon.svg"))?;
    s.execute("sessionStorage.clear(); return true", &[])?;
    // A new query string: a fresh page load, not just a fragment change.
    s.navigate(&format!(
        "{base}/?signin={}#/fleet",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ))?;
    s.wait_for(
        "return document.body.dataset.state === 'ready' && document.body.dataset.page === 'login'",
        Duration::from_secs(20),
    )?;
    s.execute(
        "document.getElementById('token').value = arguments[0]; document.getElementById('login-form').requestSubmit(); return true",
        &[json!(token)],
    )?;
    s.wait_for(
        "return document.body.dataset.state !== 'loading' && document.body.dataset.page !== 'login'",
        Duration::from_secs(20),
    )
    .map_err(|e| format!("sign-in: {e}"))?;
    errors_of(s, "sign-in")
}

/// Fail on script errors recorded by the page's hook or SEVERE browser log entries.
pub fn errors_of(s: &Session, what: &str) -> Result<(), String> {
    let hooked = s.execute(
        "const e = window.__consoleErrors || []; const out = e.slice(); e.length = 0; return out",
        &[],
    )?;
    let mut errs: Vec<String> = hooked
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or("").to_owned())
        .collect();
    errs.extend(
        s.browser_log()
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .map(|(_, m)| m),
    );
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: browser console errors: {errs:#?}"))
    }
}

fn load_page(
    s: &Session,
    name: &str,
    route: &str,
    chart: bool,
    c: &ConsoleCheck,
) -> Result<PageReport, String> {
    let page = route
        .trim_start_matches("#/")
        .split('/')
        .next()
        .unwrap_or("");
    let t = Instant::now();
    s.execute(
        "document.body.dataset.state = 'loading';
         if (location.hash === arguments[0]) window.dispatchEvent(new HashChangeEvent('hashchange'));
         else location.hash = arguments[0];
         return true",
        &[json!(route)],
    )?;
    s.wait_for(
        &format!("return document.body.dataset.page === {page:?} && document.body.dataset.state !== 'loading'"),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("page {name}: {e}"))?;
    let load_ms = t.elapsed().as_millis();
    let state = s.execute("return document.body.dataset.state", &[])?;
    let text = s.execute(
        "return document.getElementById('page').innerText.slice(0, 600)",
        &[],
    )?;
    if state != json!("ready") {
        return Err(format!("page {name}: state {state}: {text}"));
    }
    errors_of(s, &format!("page {name}"))?;
    let points: Vec<u64> = s
        .execute("return [...document.querySelectorAll('#page svg[data-points]')].map(e => Number(e.dataset.points))", &[])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    if chart && (points.is_empty() || points.contains(&0)) {
        return Err(format!(
            "page {name}: a chart is missing or empty (points {points:?}): {text}"
        ));
    }
    // Fit the window to the page for a full screenshot (at most 4000 px).
    let height = s
        .execute(
            "return Math.ceil(document.documentElement.scrollHeight)",
            &[],
        )?
        .as_u64()
        .unwrap_or(1000)
        .clamp(700, 4000);
    s.set_window(1440, u32::try_from(height).unwrap_or(1000))?;
    let shot = c.screenshot_dir.join(format!("{name}.png"));
    s.screenshot(&shot)?;
    s.set_window(1440, 1000)?;
    Ok(PageReport {
        name: name.to_owned(),
        route: route.to_owned(),
        chart_points: points,
        load_ms,
        screenshot: shot,
    })
}
