//! Interoperability: the agent against a Modbus TCP server this project did not write (pymodbus,
//! in a separate Python process; see tests/support/pymodbus_server.py for its register map).

use std::process::Command;
use std::time::Duration;

use edge_agent::config::parse_str;
use edge_agent::drivers::read_once;
use edge_agent::model::{Quality, Value};
use flowsquare_tests::{external, workspace_root, Proc};

#[tokio::test]
async fn reads_every_type_from_pymodbus_and_keeps_going_after_an_exception() {
    let Some(py) = external::python() else {
        external::missing("python virtualenv with pymodbus");
        return;
    };
    let mut cmd = Command::new(py);
    cmd.arg(workspace_root().join("tests/support/pymodbus_server.py"));
    let server = Proc::spawn(cmd, 1, Duration::from_secs(30)).expect("pymodbus server");
    let addr = &server.listening[0];
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let map = format!(
        r#"
[agent]
site = "interop"
id = "gw"

[[device]]
name = "pymodbus"
protocol = "modbus-tcp"
host = "{host}"
port = {port}
timeout = "2s"
  [[device.tag]]
  name = "p/f32"
  register = "holding"
  address = 0
  type = "f32"
  [[device.tag]]
  name = "p/u16"
  register = "holding"
  address = 2
  [[device.tag]]
  name = "p/i16"
  register = "holding"
  address = 3
  type = "i16"
  [[device.tag]]
  name = "p/u32-cdab"
  register = "holding"
  address = 4
  type = "u32"
  order = "CDAB"
  [[device.tag]]
  name = "p/string"
  register = "holding"
  address = 6
  type = "string"
  length = 8
  [[device.tag]]
  name = "p/beyond-the-map"
  register = "holding"
  address = 20
  [[device.tag]]
  name = "p/temperature"
  register = "input"
  address = 0
  type = "i16"
  scale = 0.1
  [[device.tag]]
  name = "p/coil-2"
  register = "coil"
  address = 2
"#
    );
    let (map, _) = parse_str("interop.toml", &map).expect("valid map");
    let readings = read_once(&map, None).await;
    let by_name = |n: &str| {
        let id = map.tag_by_name(n).expect("tag").id;
        readings
            .iter()
            .find(|r| r.tag == id)
            .expect("reading")
            .clone()
    };
    assert_eq!(by_name("p/f32").value, Some(Value::Float(12.5)));
    assert_eq!(by_name("p/u16").value, Some(Value::Int(4242)));
    assert_eq!(by_name("p/i16").value, Some(Value::Int(-5)));
    assert_eq!(by_name("p/u32-cdab").value, Some(Value::Int(123_456_789)));
    assert_eq!(
        by_name("p/string").value,
        Some(Value::Text("TK-101".into()))
    );
    let t = by_name("p/temperature")
        .value
        .and_then(|v| v.as_f64())
        .expect("temperature");
    assert!((t - 21.5).abs() < 1e-9);
    assert_eq!(by_name("p/coil-2").value, Some(Value::Bool(true)));
    // The read past the server's map gets exception 2; only its own tag is bad.
    let beyond = by_name("p/beyond-the-map");
    assert_eq!(beyond.quality, Quality::BadDevice);
    assert_eq!(beyond.status, Some(2));
    assert_eq!(
        readings
            .iter()
            .filter(|r| r.quality == Quality::Good)
            .count(),
        7
    );
}
