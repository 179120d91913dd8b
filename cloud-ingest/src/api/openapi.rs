//! `GET /api/v1/openapi.json`: the OpenAPI 3.0 description of every route, written by hand.
//! Tests hold it to the router's route table and to the JSON the row types actually serialize to.

use std::sync::OnceLock;

use serde_json::{json, Value};

use super::page::PAGED;
use super::routes::{MAX_BUCKETS, MAX_LATEST_TAGS};

/// The document (built once).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = build();
        add_reconciliation(&mut doc);
        add_console(&mut doc);
        add_access(&mut doc);
        add_paging(&mut doc);
        add_robustness(&mut doc);
        doc
    })
}

/// `{"data": [items]}`.
fn list_of(schema: &str, description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": {
            "type": "object",
            "required": ["data"],
            "properties": { "data": { "type": "array", "items": { "$ref": format!("#/components/schemas/{schema}") } } }
        } } }
    })
}

fn errors(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        let name = match *c {
            "400" => "BadRequest",
            "401" => "Unauthorized",
            "403" => "Forbidden",
            "404" => "NotFound",
            "503" => "Unavailable",
            _ => "Internal",
        };
        m.insert(
            (*c).to_owned(),
            json!({ "$ref": format!("#/components/responses/{name}") }),
        );
    }
    Value::Object(m)
}

/// Responses of a data route: 200 plus the given error codes plus 401, 500, 503.
fn responses(ok: Value, codes: &[&str]) -> Value {
    let mut all: Vec<&str> = codes.to_vec();
    all.extend(["401", "500", "503"]);
    let mut r = errors(&all);
    if let Value::Object(m) = &mut r {
        m.insert("200".into(), ok);
    }
    r
}

fn param(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn build() -> Value {
    let int64 = json!({ "type": "integer", "format": "int64" });
    let ms = |d: &str| json!({ "type": "integer", "format": "int64", "description": format!("{d} (UTC, epoch milliseconds)") });
    let nullable = |mut v: Value| {
        if let Value::Object(m) = &mut v {
            m.insert("nullable".into(), Value::Bool(true));
        }
        v
    };
    let string = |d: &str| json!({ "type": "string", "description": d });
    let number = |d: &str| json!({ "type": "number", "format": "double", "nullable": true, "description": d });
    let status_ok = |desc: &str, example: &str| {
        json!({
            "description": desc,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" }, "example": { "status": example } } }
        })
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "FlowSquare cloud ingest API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": concat!(
                "Read access to what the cloud ingest has stored: agents, tags, latest values, bucketed series, gaps, dead letters.\n\n",
                "Conventions: `/api/v1` data routes answer `{\"data\": [...]}` (always an array). Errors are RFC 7807 `application/problem+json` ",
                "(`type`, `title`, `status`, `detail`, `instance`, and `parameter` for 400). Times are UTC epoch milliseconds in bodies; ",
                "query parameters take RFC 3339 or epoch milliseconds. Unknown query parameters are rejected with 400.\n\n",
                "Authentication: `Authorization: Bearer <token>` on `/api/v1` data routes. Roles: viewer (read data); operator ⊇ viewer; ",
                "auditor ⊇ viewer (plus audit routes: dead letters, the audit log); admin ⊇ all. Each operation states its role in `x-required-role`."
            )
        },
        "security": [ { "bearerAuth": [] } ],
        "tags": [
            { "name": "probes", "description": "Open: liveness, readiness, metrics, this document." },
            { "name": "data", "description": "Stored data (viewer)." },
            { "name": "audit", "description": "Audit routes (auditor or admin)." },
            { "name": "movements", "description": "Ship discharges and ePODs (read: viewer; post: operator)." },
            { "name": "reconciliation", "description": "Daily reconciliation runs, variance records (JSON or CSV) and alerts." },
            { "name": "admin", "description": "Managing the service (admin, all sites)." }
        ],
        "paths": {
            "/healthz": { "get": {
                "tags": ["probes"], "operationId": "healthz", "summary": "Liveness: the process is up.", "security": [],
                "responses": { "200": status_ok("Alive.", "ok") }
            } },
            "/readyz": { "get": {
                "tags": ["probes"], "operationId": "readyz", "security": [],
                "summary": "Readiness: the consumer is connected to the broker and the database answers a ping.",
                "responses": { "200": status_ok("Ready.", "ready"), "503": { "$ref": "#/components/responses/Unavailable" } }
            } },
            "/metrics": { "get": {
                "tags": ["probes"], "operationId": "metrics", "security": [],
                "summary": "Prometheus text exposition (0.0.4) of the consumer counters, `flowsquare_ingest_*`.",
                "responses": { "200": {
                    "description": "Metrics.",
                    "content": { "text/plain": { "schema": { "type": "string" }, "example": "# HELP flowsquare_ingest_stored_readings_total Readings committed to the database.\n# TYPE flowsquare_ingest_stored_readings_total counter\nflowsquare_ingest_stored_readings_total 1234\n" } }
                } }
            } },
            "/api/v1/openapi.json": { "get": {
                "tags": ["probes"], "operationId": "openapi", "security": [], "summary": "This document.",
                "responses": { "200": { "description": "OpenAPI 3.0 document.", "content": { "application/json": { "schema": { "type": "object" } } } } }
            } },
            "/api/v1/agents": { "get": {
                "tags": ["data"], "operationId": "listAgents", "x-required-role": "viewer",
                "summary": "Agents, by site and agent.",
                "responses": responses(list_of("Agent", "Agents."), &["400", "403"])
            } },
            "/api/v1/tags": { "get": {
                "tags": ["data"], "operationId": "listTags", "x-required-role": "viewer",
                "summary": "Tags of the registry, by site, agent and name.",
                "parameters": [ param("site"), param("prefix") ],
                "responses": responses(list_of("Tag", "Tags."), &["400", "403"])
            } },
            "/api/v1/latest": { "get": {
                "tags": ["data"], "operationId": "latestValues", "x-required-role": "viewer",
                "summary": "Latest reading of each tag asked for (tags without readings are left out).",
                "parameters": [ param("tag_id") ],
                "responses": responses(list_of("Latest", "Latest readings."), &["400", "403", "404"])
            } },
            "/api/v1/tags/{id}/series": { "get": {
                "tags": ["data"], "operationId": "tagSeries", "x-required-role": "viewer",
                "summary": "A tag's readings in [from, to) by buckets of `step`.",
                "description": format!("Buckets are aligned on multiples of `step` since the Unix epoch (UTC); only buckets holding readings are returned. A request spanning more than {MAX_BUCKETS} buckets is rejected (400, parameter `step`)."),
                "parameters": [ param("id"), param("from"), param("to"), param("step") ],
                "responses": responses(list_of("Bucket", "Buckets, oldest first."), &["400", "403", "404"])
            } },
            "/api/v1/gaps": { "get": {
                "tags": ["data"], "operationId": "listGaps", "x-required-role": "viewer",
                "summary": "Gap records (data the agents reported lost) overlapping [from, to).",
                "parameters": [ param("site"), param("from"), param("to") ],
                "responses": responses(list_of("Gap", "Gap records."), &["400", "403"])
            } },
            "/api/v1/dead-letters": { "get": {
                "tags": ["audit"], "operationId": "listDeadLetters", "x-required-role": "auditor",
                "summary": "The newest dead letters (messages the consumer could not use), newest first; payloads are not served.",
                "responses": responses(list_of("DeadLetter", "Dead letters."), &["400", "403"])
            } }
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "description": "A token configured in `[[api.tokens]]` (by its SHA-256), or, when `[api.jwt]` is configured, a JWT of its issuer (RS256/ES256/EdDSA, checked against its JWKS file; role and sites from claims)." }
            },
            "parameters": {
                "id": { "name": "id", "in": "path", "required": true, "description": "Tag id (series), discharge id or ePOD id.", "schema": int64 },
                "site": { "name": "site", "in": "query", "required": false, "description": "Only this site (empty = all).", "schema": { "type": "string" } },
                "prefix": { "name": "prefix", "in": "query", "required": false, "description": "Only tags whose name starts with this (case-sensitive, no wildcards; empty = all).", "schema": { "type": "string" } },
                "from": { "name": "from", "in": "query", "required": true, "description": "Start of the range (inclusive): RFC 3339 (`2026-01-01T00:00:00Z`) or epoch milliseconds, 1970-01-01 .. 9999-12-31 (else 400 naming it).", "schema": { "type": "string" }, "example": "2026-01-01T00:00:00Z" },
                "to": { "name": "to", "in": "query", "required": true, "description": "End of the range (exclusive), after `from`: RFC 3339 or epoch milliseconds, 1970-01-01 .. 9999-12-31.", "schema": { "type": "string" }, "example": "1767229200000" },
                "step": { "name": "step", "in": "query", "required": true, "description": "Bucket width: a positive integer and a unit, ms, s, m, h or d.", "schema": { "type": "string", "pattern": "^[0-9]+(ms|s|m|h|d)$" }, "example": "5m" },
                "tag_id": {
                    "name": "tag_id", "in": "query", "required": true, "style": "form", "explode": true,
                    "description": format!("Tag ids, repeated (`tag_id=1&tag_id=2`) and/or comma-separated (`tag_id=1,2`); duplicates ignored; 1 to {MAX_LATEST_TAGS} ids. Unknown ids: 404."),
                    "schema": { "type": "array", "items": { "type": "string" } }
                }
            },
            "responses": {
                "BadRequest": problem_response("A parameter is missing or malformed (named in `parameter` and `detail`)."),
                "Unauthorized": {
                    "description": "Missing, malformed or unknown bearer token.",
                    "headers": { "WWW-Authenticate": { "schema": { "type": "string" }, "description": "`Bearer realm=\"flowsquare\"`" } },
                    "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                },
                "Forbidden": problem_response("The token's role does not grant this route (the role needed is in `detail`)."),
                "NotFound": problem_response("No such route or tag."),
                "Unavailable": {
                    "description": "The database is unavailable (or, for /readyz, the service is not ready). Retry later.",
                    "headers": { "Retry-After": { "schema": { "type": "integer" }, "description": "Seconds." } },
                    "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                },
                "Internal": problem_response("Unexpected failure (the cause is in the service log).")
            },
            "schemas": {
                "Problem": {
                    "type": "object", "description": "RFC 7807 problem details.",
                    "required": ["type", "title", "status", "detail", "instance"],
                    "properties": {
                        "type": { "type": "string", "description": "URI of the kind: urn:flowsquare:problem:{bad-parameter, bad-request, unauthorized, forbidden, not-found, method-not-allowed, request-timeout, conflict, uri-too-long, invalid-body, rate-limited, headers-too-large, unavailable, internal}." },
                        "title": string("Summary of the kind."),
                        "status": { "type": "integer", "description": "HTTP status." },
                        "detail": string("What went wrong in this request."),
                        "instance": string("The request path."),
                        "parameter": string("For 400: the parameter at fault."),
                        "errors": { "type": "array", "items": { "type": "string" }, "description": "For 422: every problem with the request body." },
                        "request_id": string("The request's id, as in the `X-Request-Id` response header.")
                    }
                },
                "Status": {
                    "type": "object", "required": ["status"],
                    "properties": { "status": { "type": "string", "enum": ["ok", "ready"] } }
                },
                "Agent": {
                    "type": "object",
                    "required": ["site", "agent", "online", "last_seen_ms", "version", "config_hash", "backlog_readings", "oldest_unsent_ms", "buffer", "buffer_replaced_ms", "birth_refused"],
                    "properties": {
                        "site": string("Site id."),
                        "agent": string("Agent id."),
                        "online": { "type": "boolean", "description": "Online according to its last status (or Last Will)." },
                        "last_seen_ms": nullable(ms("Last message of any kind")),
                        "version": nullable(string("Agent version from birth/status.")),
                        "config_hash": nullable(string("Current config hash (latest birth).")),
                        "birth_refused": nullable(string("Why the agent's latest birth was refused: `birth refused: N tags > limit M` (`[ingest] max_tags_per_agent`); its batches of that config wait unacknowledged, the agent keeps its data. Null: not refused.")),
                        "backlog_readings": { "type": "integer", "format": "int64", "minimum": 0, "nullable": true, "description": "Readings held in its buffer at the last heartbeat." },
                        "oldest_unsent_ms": nullable(ms("Oldest unsent reading at the last heartbeat")),
                        "buffer": {
                            "type": "object", "nullable": true,
                            "description": "The buffer database the agent sends from (its latest birth that named one; null for agents that do not report it).",
                            "required": ["epoch", "created_ms", "origin", "note", "first_seen_ms"],
                            "properties": {
                                "epoch": { "type": "integer", "format": "int64", "minimum": 1, "description": "Identity of the buffer database (random; batch ids are per epoch)." },
                                "created_ms": ms("When the agent created it (agent clock)"),
                                "origin": { "type": "string", "enum": ["new", "existing", "replaced-corrupt", "replaced-empty"], "description": "Why it was created." },
                                "note": nullable(string("What the agent says about a replacement (salvaged, lost).")),
                                "first_seen_ms": ms("When the cloud first saw it")
                            }
                        },
                        "buffer_replaced_ms": nullable(ms("When a birth last brought a replacement buffer (first seen); a `buffer-replaced` gap of unknown count covers the data between the agent's last stored reading and the new buffer's creation"))
                    }
                },
                "Tag": {
                    "type": "object",
                    "required": ["id", "site", "agent", "name", "unit", "kind", "device", "description", "interval_ms"],
                    "properties": {
                        "id": { "type": "integer", "format": "int64", "description": "Tag id (stable, never reused)." },
                        "site": string("Site."),
                        "agent": string("Agent."),
                        "name": string("Hierarchical name."),
                        "unit": nullable(string("Engineering unit.")),
                        "kind": string("gauge / totalizer / state."),
                        "device": string("Device name."),
                        "description": nullable(string("Free text.")),
                        "interval_ms": { "type": "integer", "format": "int64", "description": "Poll interval (expected reporting interval), ms." }
                    }
                },
                "Latest": {
                    "type": "object",
                    "required": ["tag_id", "ts_ms", "value", "text", "quality"],
                    "properties": {
                        "tag_id": int64,
                        "ts_ms": ms("Time"),
                        "value": number("Numeric value (numbers and booleans as 0/1)."),
                        "text": nullable(string("Text value.")),
                        "quality": string("Quality (`good`, `bad-communication`, …).")
                    }
                },
                "Bucket": {
                    "type": "object",
                    "required": ["ts_ms", "min", "max", "avg", "last", "count", "bad"],
                    "properties": {
                        "ts_ms": ms("Bucket start"),
                        "min": number("Minimum of good values."),
                        "max": number("Maximum of good values."),
                        "avg": number("Mean of good values."),
                        "last": number("Last good value."),
                        "count": { "type": "integer", "format": "int64", "description": "Readings in the bucket (all qualities)." },
                        "bad": { "type": "integer", "format": "int64", "description": "Readings of bad quality in the bucket." }
                    }
                },
                "Gap": {
                    "type": "object",
                    "required": ["site", "agent", "batch_id", "tag_ids", "from_ms", "to_ms", "count", "count_known", "reason", "detail"],
                    "properties": {
                        "site": string("Site."),
                        "agent": string("Agent."),
                        "batch_id": { "type": "integer", "format": "int64", "description": "Batch that reported it (0: recorded by the cloud, e.g. `buffer-replaced`)." },
                        "tag_ids": { "type": "array", "items": int64, "description": "Tag ids concerned (empty = all tags of the agent)." },
                        "from_ms": ms("Start of the missing range"),
                        "to_ms": ms("End of the missing range"),
                        "count": { "type": "integer", "format": "int64", "nullable": true, "description": "Readings lost; null when unknown (a crash window, a vanished buffer): a span to look at, not a number to add." },
                        "count_known": { "type": "boolean", "description": "Whether `count` is known." },
                        "reason": string("Why (`buffer-full`, `buffer-age`, `missed-event`, `unclean-shutdown`, `buffer-replaced`, or free text)."),
                        "detail": nullable(string("More about it (a replaced buffer: its epoch, origin and the agent's note)."))
                    }
                },
                "DeadLetter": {
                    "type": "object",
                    "required": ["id", "topic", "reason", "bytes", "received_ms"],
                    "properties": {
                        "id": { "type": "integer", "format": "int64", "description": "Row id." },
                        "topic": string("Topic it came on."),
                        "reason": string("Why it was rejected."),
                        "bytes": { "type": "integer", "format": "int64", "description": "Payload size." },
                        "received_ms": ms("Received")
                    }
                }
            }
        }
    })
}

/// The movements, reconciliation and alerts routes (added to the base document).
fn add_reconciliation(doc: &mut Value) {
    let num = |d: &str| json!({ "type": "number", "format": "double", "description": d });
    let nnum = |d: &str| json!({ "type": "number", "format": "double", "nullable": true, "description": d });
    let s = |d: &str| json!({ "type": "string", "description": d });
    let ms = |d: &str| json!({ "type": "integer", "format": "int64", "description": format!("{d} (UTC, epoch milliseconds)") });
    let b = |d: &str| json!({ "type": "boolean", "description": d });
    let when = |d: &str| json!({ "oneOf": [ { "type": "string", "format": "date-time" }, { "type": "integer", "format": "int64" } ], "description": format!("{d}: RFC 3339 or epoch milliseconds, from 2000-01-01 to one day after now (the data clock); anything else is a 422 naming the field") });
    let body = |schema: &str| json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
    let with = |mut r: Value, extra: &[(&str, Value)]| {
        if let Value::Object(m) = &mut r {
            for (k, v) in extra {
                m.insert((*k).to_owned(), v.clone());
            }
        }
        r
    };
    let problem = |d: &str| problem_response(d);
    let csv_ok = |d: &str| {
        let mut v = list_of("Variance", d);
        v["content"]["text/csv"] = json!({ "schema": { "type": "string" }, "example": "date,site,kind,place,stage,product,reference_l,measured_l,variance_l,variance_pct,tolerance_pct,verdict,run_id,coverage_pct,data_complete,missing,detail\r\n" });
        v
    };
    let audit_ok = |d: &str| {
        let mut v = list_of("AuditEntry", d);
        v["content"]["text/csv"] = json!({ "schema": { "type": "string" }, "example": "id,at_ms,actor,role,action,target,before,after\r\n" });
        v
    };
    let paths = json!({
        "/api/v1/discharges": {
            "get": {
                "tags": ["movements"], "operationId": "listDischarges", "x-required-role": "viewer",
                "summary": "Ship discharges overlapping [from, to) (open ones included).",
                "parameters": [ param("from"), param("to") ],
                "responses": responses(list_of("Discharge", "Discharges."), &["400", "403"])
            },
            "post": {
                "tags": ["movements"], "operationId": "openDischarge", "x-required-role": "operator",
                "summary": "Open a ship discharge: vessel, parcel/B-L number and quantity, product, receiving tanks, start.",
                "requestBody": body("DischargeOpen"),
                "responses": with(responses(list_of("Discharge", "Opened."), &["400", "403"]), &[("201", list_of("Discharge", "Opened.")), ("422", problem("Invalid body: every problem in `errors`."))])
            }
        },
        "/api/v1/discharges/{id}/close": { "post": {
            "tags": ["movements"], "operationId": "closeDischarge", "x-required-role": "operator",
            "summary": "Close a discharge (end time, the ship's figure). Its quantity is the jetty meter totalizer delta over the window; the receipts are the receiving tanks' NSV change.",
            "parameters": [ param("id") ],
            "requestBody": body("DischargeClose"),
            "responses": with(responses(list_of("Discharge", "Closed."), &["400", "403", "404"]), &[("409", problem("Already closed.")), ("422", problem("Invalid body."))])
        } },
        "/api/v1/discharges/{id}": { "get": {
            "tags": ["movements"], "operationId": "getDischarge", "x-required-role": "viewer",
            "summary": "A discharge as it stands (its latest version) with its history: `version` and `versions` (every version, the original first, with who, when and why; empty when never amended).",
            "parameters": [ param("id") ],
            "responses": responses(list_of("DischargeHistory", "One discharge."), &["400", "403", "404"])
        } },
        "/api/v1/discharges/{id}/amend": { "post": {
            "tags": ["movements"], "operationId": "amendDischarge", "x-required-role": "operator",
            "summary": "Correct a discharge: the corrected fields (any of the open body's, `closed_at`, `ship_l`) and a mandatory `reason`. A new version is stored; the original and every earlier version are kept; the reconciliation uses the latest. Audited.",
            "parameters": [ param("id") ],
            "requestBody": body("DischargeAmend"),
            "responses": with(responses(list_of("DischargeHistory", "Amended."), &["400", "403", "404"]), &[("422", problem("Invalid body (no reason, nothing changed, invalid corrected fields)."))])
        } },
        "/api/v1/epods/{id}": { "get": {
            "tags": ["movements"], "operationId": "getEpod", "x-required-role": "viewer",
            "summary": "An ePOD as it stands (its latest version) with its history: `version` and `versions` (every version, the original first, with who, when and why; empty when never amended).",
            "parameters": [ param("id") ],
            "responses": responses(list_of("EpodHistory", "One ePOD."), &["400", "403", "404"])
        } },
        "/api/v1/epods/{id}/amend": { "post": {
            "tags": ["movements"], "operationId": "amendEpod", "x-required-role": "operator",
            "summary": "Correct an ePOD: the corrected fields (any of the post body's) and a mandatory `reason`. A new version is stored; the original and every earlier version are kept; the reconciliation uses the latest. Audited.",
            "parameters": [ param("id") ],
            "requestBody": body("EpodAmend"),
            "responses": with(responses(list_of("EpodHistory", "Amended."), &["400", "403", "404"]), &[("409", problem("The corrected BOL belongs to another ePOD.")), ("422", problem("Invalid body (no reason, nothing changed, invalid corrected fields)."))])
        } },
        "/api/v1/freshness": { "get": {
            "tags": ["data"], "operationId": "freshness", "x-required-role": "viewer",
            "summary": "Every tag's freshness by the stale-tag check's rule and clock: fresh only with a good reading within max(factor × poll interval, min age); bad-quality readings count as silence.",
            "parameters": [ param("site") ],
            "responses": responses(list_of("Freshness", "One row per tag."), &["400", "403"])
        } },
        "/api/v1/audit": { "get": {
            "tags": ["audit"], "operationId": "auditLog", "x-required-role": "auditor",
            "summary": "The audit log, newest first: every write through the API and CLI (discharge open/close/amend, ePOD post/amend, reconciliation runs, CLI reconcile and import) with actor (token name and role; `cli:<user>`), time (data clock), action, target and the record before and after. `?format=csv` for CSV.",
            "parameters": [ param("audit_from"), param("audit_to"), param("actor"), param("action"), param("target"), param("format") ],
            "responses": responses(audit_ok("Audit entries."), &["400", "403"])
        } },
        "/api/v1/audit.csv": { "get": {
            "tags": ["audit"], "operationId": "auditLogCsv", "x-required-role": "auditor",
            "summary": "The audit log as CSV (same filters as /api/v1/audit).",
            "parameters": [ param("audit_from"), param("audit_to"), param("actor"), param("action"), param("target") ],
            "responses": responses(audit_ok("Audit entries (text/csv)."), &["400", "403"])
        } },
        "/api/v1/epods": {
            "get": {
                "tags": ["movements"], "operationId": "listEpods", "x-required-role": "viewer",
                "summary": "ePODs delivered in [from, to).",
                "parameters": [ param("from"), param("to") ],
                "responses": responses(list_of("Epod", "ePODs."), &["400", "403"])
            },
            "post": {
                "tags": ["movements"], "operationId": "postEpod", "x-required-role": "operator",
                "summary": "Post an electronic proof of delivery (validated: every problem is reported at once).",
                "description": "201 when stored; 200 when the same ePOD is posted again (idempotent); 409 when the BOL already has another ePOD (the problem names it: correct it with POST /api/v1/epods/{id}/amend); 422 on invalid input (unknown station, position far from it, bad quantities, duplicate compartments, …).",
                "requestBody": body("EpodPost"),
                "responses": with(responses(list_of("Epod", "Posted again (same content)."), &["400", "403"]), &[("201", list_of("Epod", "Stored.")), ("409", problem("Another ePOD is stored for this BOL.")), ("422", problem("Invalid body: every problem in `errors`."))])
            }
        },
        "/api/v1/reconciliation/runs": { "get": {
            "tags": ["reconciliation"], "operationId": "listRuns", "x-required-role": "viewer",
            "summary": "Reconciliation runs, newest first. A re-run of a date supersedes its previous run (`supersedes`, `superseded_by`); the superseded run's records stay readable with `?run=ID` or `?as_of=TIME`.",
            "parameters": [],
            "responses": responses(list_of("Run", "Runs."), &["400", "403"])
        } },
        "/api/v1/reconciliation/run": { "post": {
            "tags": ["reconciliation"], "operationId": "runReconciliation", "x-required-role": "operator",
            "summary": "Reconcile a day now (the new run supersedes the day's previous one, whose records stay; alerts no longer found are closed). Audited.",
            "parameters": [ param("date_query") ],
            "responses": with(responses(list_of("Run", "The run."), &["400", "403"]), &[("409", problem("No [reconcile] site model configured."))])
        } },
        "/api/v1/reconciliation/{date}": { "get": {
            "tags": ["reconciliation"], "operationId": "reconciliationChain", "x-required-role": "viewer",
            "summary": "The chain per product (ship → jetty → tanks → gantry → stations, each stage against the previous) and the parcels of a day. `{date}.csv` or `?format=csv` for CSV.",
            "parameters": [ param("date"), param("format"), param("run"), param("as_of") ],
            "responses": responses(csv_ok("Chain and parcel records."), &["400", "403"])
        } },
        "/api/v1/reconciliation/{date}/tanks": { "get": {
            "tags": ["reconciliation"], "operationId": "reconciliationTanks", "x-required-role": "viewer",
            "summary": "Tank stock balances of a day (opening + receipts − loadings − closing).",
            "parameters": [ param("date"), param("format"), param("run"), param("as_of") ],
            "responses": responses(csv_ok("Tank records."), &["400", "403"])
        } },
        "/api/v1/reconciliation/{date}/trips": { "get": {
            "tags": ["reconciliation"], "operationId": "reconciliationTrips", "x-required-role": "viewer",
            "summary": "Trips loaded on a day: transit variance (loaded vs delivered), pending or missing ePODs.",
            "parameters": [ param("date"), param("format"), param("run"), param("as_of") ],
            "responses": responses(csv_ok("Trip records."), &["400", "403"])
        } },
        "/api/v1/reconciliation/{date}/meters": { "get": {
            "tags": ["reconciliation"], "operationId": "reconciliationMeters", "x-required-role": "viewer",
            "summary": "Gantry meters of a day: batch records against totalizers, and the meter-vs-tank trend point with its control limits.",
            "parameters": [ param("date"), param("format"), param("run"), param("as_of") ],
            "responses": responses(csv_ok("Meter records."), &["400", "403"])
        } },
        "/api/v1/alerts": { "get": {
            "tags": ["reconciliation"], "operationId": "listAlerts", "x-required-role": "viewer",
            "summary": "Alerts (reconciliation exceptions, meter drift, unscheduled stops, stale tags), newest first.",
            "parameters": [ param("state") ],
            "responses": responses(list_of("Alert", "Alerts."), &["400", "403"])
        } }
    });
    let params = json!({
        "date": { "name": "date", "in": "path", "required": true, "description": "Day (UTC) `YYYY-MM-DD` (1970 .. 9999), optionally with `.csv`.", "schema": { "type": "string" }, "example": "2026-03-20" },
        "date_query": { "name": "date", "in": "query", "required": true, "description": "Day (UTC) `YYYY-MM-DD` (1970 .. 9999).", "schema": { "type": "string" }, "example": "2026-03-20" },
        "format": { "name": "format", "in": "query", "required": false, "description": "`json` (default) or `csv`.", "schema": { "type": "string", "enum": ["json", "csv"] } },
        "state": { "name": "state", "in": "query", "required": false, "description": "`open` or `closed` (default: both).", "schema": { "type": "string", "enum": ["open", "closed"] } },
        "run": { "name": "run", "in": "query", "required": false, "description": "Read this run of the date (default: the current one). Not with `as_of`.", "schema": { "type": "integer", "format": "int64" } },
        "as_of": { "name": "as_of", "in": "query", "required": false, "description": "Read the run of the date that was current at this time (the newest finished by then): RFC 3339 or epoch ms. Not with `run`.", "schema": { "type": "string" } },
        "site": { "name": "site", "in": "query", "required": false, "description": "Only this site.", "schema": { "type": "string" } },
        "audit_from": { "name": "from", "in": "query", "required": false, "description": "At or after (RFC 3339 or epoch ms).", "schema": { "type": "string" } },
        "audit_to": { "name": "to", "in": "query", "required": false, "description": "Before (RFC 3339 or epoch ms).", "schema": { "type": "string" } },
        "actor": { "name": "actor", "in": "query", "required": false, "description": "Exactly this actor (token name, or `cli:<user>`).", "schema": { "type": "string" } },
        "action": { "name": "action", "in": "query", "required": false, "description": "Exactly this action (`discharge.open`, `discharge.close`, `discharge.amend`, `epod.post`, `epod.amend`, `reconciliation.run`, `cli.reconcile`, `cli.import`).", "schema": { "type": "string" } },
        "target": { "name": "target", "in": "query", "required": false, "description": "Exactly this target (`discharge/12`, `epod/7`, `reconciliation/2026-03-20`, …).", "schema": { "type": "string" } }
    });
    let coverage = json!({ "type": "object", "required": ["ratio", "complete", "inputs", "dead_letters", "missing"], "properties": {
            "ratio": num("The weakest input's good readings / expected readings, 0…1."),
            "complete": b("Every input ≥ min_coverage, no unfilled gap or stale span at an instant the figure reads, no dead-lettered batch of its agents in the window."),
            "dead_letters": { "type": "integer", "format": "int64", "description": "Dead-lettered data batches of the inputs' agents received in the window." },
            "missing": { "type": "array", "items": { "type": "string" }, "description": "What is missing, for people (\"data missing for gw-1/jetty/JM1/net_total_l 2026-03-15 12:00–14:00 (gap: …)\")." },
            "inputs": { "type": "array", "items": { "type": "object", "required": ["tag", "from_ms", "to_ms", "expected", "present", "gaps", "stale", "boundaries_missing"], "properties": {
                "tag": s("agent/name."), "from_ms": ms("Window start"), "to_ms": ms("Window end (exclusive)"),
                "expected": { "type": "integer", "format": "int64", "description": "Readings expected (window / poll interval, from the tag's first reading)." },
                "present": { "type": "integer", "format": "int64", "description": "Good readings present." },
                "gaps": { "type": "array", "items": { "type": "object", "properties": {
                    "from_ms": ms("Start"), "to_ms": ms("End"), "count": { "type": "integer", "format": "int64", "nullable": true, "description": "Readings lost; null: unknown." },
                    "reason": s("Why."), "filled": b("Its data has arrived since (backfill, import).") } } },
                "stale": { "type": "array", "items": { "type": "object", "properties": { "from_ms": ms("Start"), "to_ms": ms("End") } }, "description": "Spans without a good reading for longer than the tag's stale limit." },
                "boundaries_missing": { "type": "array", "items": { "type": "integer", "format": "int64" }, "description": "Instants the figure reads the tag at that fall in an unfilled gap or a stale span." }
            } } }
        } });
    let schemas = json!({
        "DischargeOpen": { "type": "object", "required": ["site", "vessel", "parcel", "product", "bl_l", "tanks", "opened_at"], "properties": {
            "site": s("Terminal site."), "vessel": s("Vessel."), "parcel": s("Parcel / B-L number."), "product": s("Product."),
            "bl_l": num("B/L quantity, litres at the base temperature."),
            "tanks": { "type": "array", "items": { "type": "string" }, "description": "Receiving tanks (site-model ids; same site and product)." },
            "meters": { "type": "array", "items": { "type": "string" }, "description": "Jetty meters (default: every jetty meter of the site)." },
            "opened_at": when("Start")
        } },
        "DischargeClose": { "type": "object", "required": ["closed_at"], "properties": {
            "closed_at": when("End"), "ship_l": num("The ship's figure of what it discharged, litres.")
        } },
        "Discharge": { "type": "object", "required": ["id", "site", "vessel", "parcel", "product", "bl_l", "tanks", "meters", "opened_ms", "closed_ms", "ship_l"], "properties": {
            "id": { "type": "integer", "format": "int64" }, "site": s("Site."), "vessel": s("Vessel."), "parcel": s("Parcel / B-L."), "product": s("Product."),
            "bl_l": num("B/L quantity, litres."), "tanks": { "type": "array", "items": { "type": "string" } }, "meters": { "type": "array", "items": { "type": "string" } },
            "opened_ms": ms("Start"), "closed_ms": { "type": "integer", "format": "int64", "nullable": true, "description": "End (null: open)." },
            "ship_l": nnum("The ship's figure, litres.")
        } },
        "EpodCompartment": { "type": "object", "required": ["compartment", "product", "gross_l"], "properties": {
            "compartment": { "type": "integer", "minimum": 1, "maximum": 99 }, "product": s("Product."),
            "gross_l": num("Delivered gross volume, litres."), "net_l": nnum("Delivered net standard volume, litres (compared with the loaded NSV; without it gross is compared).")
        } },
        "EpodPost": { "type": "object", "required": ["trip", "bol", "truck", "station", "delivered_at", "receiver", "compartments"], "properties": {
            "trip": s("Trip number."), "bol": s("BOL / load number (one ePOD per BOL)."), "truck": s("Truck."), "station": s("Station id (site model)."),
            "delivered_at": when("Delivered"), "receiver": s("Who received."), "lat": nnum("Latitude of the delivery."), "lon": nnum("Longitude."),
            "compartments": { "type": "array", "items": { "$ref": "#/components/schemas/EpodCompartment" } }
        } },
        "Epod": { "type": "object", "required": ["id", "trip", "bol", "truck", "station", "delivered_ms", "receiver", "lat", "lon", "compartments"], "properties": {
            "id": { "type": "integer", "format": "int64" }, "trip": s("Trip."), "bol": s("BOL."), "truck": s("Truck."), "station": s("Station."),
            "delivered_ms": ms("Delivered"), "receiver": s("Receiver."), "lat": nnum("Latitude."), "lon": nnum("Longitude."),
            "compartments": { "type": "array", "items": { "$ref": "#/components/schemas/EpodCompartment" } }
        } },
        "Run": { "type": "object", "required": ["id", "date", "trigger", "started_ms", "finished_ms", "as_of_ms", "records", "exceptions", "alerts_opened", "alerts_closed", "supersedes", "superseded_by"], "properties": {
            "supersedes": { "type": "integer", "format": "int64", "nullable": true, "description": "The previous run of the date, which this one replaced as the current figures." },
            "superseded_by": { "type": "integer", "format": "int64", "nullable": true, "description": "The later run of the date that replaced this one (null: current)." },
            "id": { "type": "integer", "format": "int64" }, "date": s("Day reconciled."), "trigger": s("`schedule`, `api` or `cli`."),
            "started_ms": ms("Started"), "finished_ms": ms("Finished"), "as_of_ms": ms("The instant it looked from (ePOD grace periods)"),
            "records": { "type": "integer", "format": "int64" }, "exceptions": { "type": "integer", "format": "int64" },
            "alerts_opened": { "type": "integer", "format": "int64" }, "alerts_closed": { "type": "integer", "format": "int64" }
        } },
        "Variance": { "type": "object", "required": ["run_id", "date", "site", "kind", "place", "stage", "product", "reference_l", "measured_l", "variance_l", "variance_pct", "tolerance_pct", "verdict", "detail"], "properties": {
            "run_id": { "type": "integer", "format": "int64" }, "date": s("Day."), "site": s("Terminal site."),
            "kind": { "type": "string", "enum": ["chain", "parcel", "tank", "trip", "meter-check", "meter-trend"] },
            "place": s("Product, parcel, tank, truck/BOL or meter."), "stage": s("Stage (ship, jetty, tanks, gantry, stations; balance; transit; totalizer; meter-vs-tank)."),
            "product": s("Product."), "reference_l": nnum("Reference (previous stage), litres."), "measured_l": nnum("This stage, litres."),
            "variance_l": nnum("measured − reference, litres (negative = loss)."), "variance_pct": nnum("Variance, % of the basis."),
            "tolerance_pct": num("Tolerance applied, ± % (meter-trend: the control half-width)."),
            "verdict": { "type": "string", "enum": ["ok", "exception", "pending", "no-data", "incomplete"], "description": "incomplete: some input data of the figure is missing (see coverage); not judged, run again when the data arrives." },
            "detail": { "type": "object", "description": "Stage figures (opening, receipts, unconfirmed, control limits, …)." },
            "coverage": { "nullable": true, "allOf": [{ "$ref": "#/components/schemas/Coverage" }], "description": "The data behind the figure; null for figures without tag inputs (trips, stations)." }
        } },
        "Coverage": coverage,
        "Alert": { "type": "object", "required": ["id", "kind", "site", "place", "date", "message", "detail", "state", "opened_ms", "closed_ms", "closed_reason"], "properties": {
            "id": { "type": "integer", "format": "int64" },
            "kind": s("tank-balance, chain-variance, parcel-variance, transit-loss, epod-missing, meter-check, meter-drift, unscheduled-stop, no-data, unknown-meter, stale-tag, data-missing (a figure's input data is missing: not judged until it arrives)."),
            "site": s("Site."), "place": s("Tank, meter, truck/BOL, product/stage, parcel/stage or agent/tag."), "date": s("Day."),
            "message": s("What happened."), "detail": { "type": "object" }, "state": { "type": "string", "enum": ["open", "closed"] },
            "opened_ms": ms("Opened"), "closed_ms": { "type": "integer", "format": "int64", "nullable": true }, "closed_reason": { "type": "string", "nullable": true }
        } }
    });
    let mut schemas = schemas;
    add_history_schemas(&mut schemas);
    let merge = |doc: &mut Value, at: &str, add: Value| {
        if let (Some(Value::Object(m)), Value::Object(a)) = (doc.pointer_mut(at), add) {
            m.extend(a);
        }
    };
    merge(doc, "/paths", paths);
    merge(doc, "/components/parameters", params);
    merge(doc, "/components/schemas", schemas);
    merge(doc, "/components/responses", json!({}));
}

/// Amendments, versions, the audit log and freshness.
fn add_history_schemas(schemas: &mut Value) {
    let s = |d: &str| json!({ "type": "string", "description": d });
    let ms = |d: &str| json!({ "type": "integer", "format": "int64", "description": format!("{d} (UTC, epoch milliseconds)") });
    let nms = |d: &str| json!({ "type": "integer", "format": "int64", "nullable": true, "description": format!("{d} (UTC, epoch milliseconds)") });
    let with_history = |base: &Value| {
        let mut v = base.clone();
        v["properties"]["version"] = json!({ "type": "integer", "format": "int64", "description": "Current version (1: never amended)." });
        v["properties"]["versions"] = json!({ "type": "array", "items": { "$ref": "#/components/schemas/Version" }, "description": "Every version, the original first (empty: never amended)." });
        if let Some(Value::Array(r)) = v.get_mut("required") {
            r.push(json!("version"));
            r.push(json!("versions"));
        }
        v
    };
    let amend = |base: &Value| {
        let mut v = base.clone();
        v["properties"]["reason"] =
            json!({ "type": "string", "description": "Why the record is amended (mandatory)." });
        v["required"] = json!(["reason"]);
        v
    };
    let epod_h = with_history(&schemas["Epod"]);
    let discharge_h = with_history(&schemas["Discharge"]);
    let epod_a = amend(&schemas["EpodPost"]);
    let mut discharge_a = amend(&schemas["DischargeOpen"]);
    discharge_a["properties"]["closed_at"] =
        schemas["DischargeClose"]["properties"]["closed_at"].clone();
    discharge_a["properties"]["ship_l"] = schemas["DischargeClose"]["properties"]["ship_l"].clone();
    let add = json!({
        "EpodHistory": epod_h, "DischargeHistory": discharge_h, "EpodAmend": epod_a, "DischargeAmend": discharge_a,
        "Version": { "type": "object", "required": ["version", "actor", "role", "at_ms", "reason", "record"], "properties": {
            "version": { "type": "integer", "format": "int64", "description": "1 = as first posted." },
            "actor": s("Who (token name; `original` for version 1)."), "role": s("Its role."), "at_ms": ms("When (data clock)"),
            "reason": s("Why."), "record": { "type": "object", "description": "The record's content in this version." }
        } },
        "AuditEntry": { "type": "object", "required": ["id", "actor", "role", "at_ms", "action", "target", "before", "after"], "properties": {
            "id": { "type": "integer", "format": "int64" }, "actor": s("Token name, or `cli:<user>`."), "role": s("Its role (`cli` for the command line)."),
            "at_ms": ms("When (data clock)"), "action": s("What."), "target": s("On what."),
            "before": { "type": "object", "nullable": true, "description": "The record before (null: none)." },
            "after": { "type": "object", "nullable": true, "description": "The record after." }
        } },
        "Freshness": { "type": "object", "required": ["tag_id", "site", "agent", "name", "interval_ms", "latest_ms", "latest_quality", "last_good_ms", "limit_ms", "stale", "stale_since_ms", "now_ms"], "properties": {
            "tag_id": { "type": "integer", "format": "int64" }, "site": s("Site."), "agent": s("Agent."), "name": s("Tag."),
            "interval_ms": { "type": "integer", "format": "int64", "description": "Poll interval, ms." },
            "latest_ms": nms("Newest reading of any quality"), "latest_quality": { "type": "string", "nullable": true },
            "last_good_ms": nms("Newest good reading (within 7 days)"), "limit_ms": { "type": "integer", "format": "int64", "description": "Age limit, ms." },
            "stale": { "type": "boolean", "description": "No good reading within the limit." },
            "stale_since_ms": nms("Without a good reading since"), "now_ms": ms("The server's data clock")
        } }
    });
    if let (Value::Object(m), Value::Object(a)) = (schemas, add) {
        m.extend(a);
    }
}

/// The routes the console needs: who am I, KPIs, the site model, truck tracks.
fn add_console(doc: &mut Value) {
    let num = |d: &str| json!({ "type": "number", "format": "double", "description": d });
    let nnum = |d: &str| json!({ "type": "number", "format": "double", "nullable": true, "description": d });
    let s = |d: &str| json!({ "type": "string", "description": d });
    let ms = |d: &str| json!({ "type": "integer", "format": "int64", "description": format!("{d} (UTC, epoch milliseconds)") });
    let nms = |d: &str| json!({ "type": "integer", "format": "int64", "nullable": true, "description": format!("{d} (UTC, epoch milliseconds)") });
    let b = |d: &str| json!({ "type": "boolean", "description": d });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    let paths = json!({
        "/api/v1/whoami": { "get": {
            "tags": ["data"], "operationId": "whoAmI", "x-required-role": "viewer",
            "summary": "The token's name and role, what it may see, and the server's clock (the console computes ages from `now_ms`).",
            "responses": responses(list_of("WhoAmI", "One entry."), &["400", "403"])
        } },
        "/api/v1/kpis": { "get": {
            "tags": ["data"], "operationId": "terminalKpis", "x-required-role": "viewer",
            "summary": "Terminal KPIs now: gross (GOV), net (NSV) and ready stock per tank and product, days of endurance at the last 7 days' loading rate.",
            "description": "Stock: the latest good reading of each gauge tag through the tank's strapping table and API MPMS 11.1 (as the reconciliation computes a stock); readings older than `gauge_max_age_s` mark the tank stale. Ready stock: NSV above the tank's `min_operating_level_mm` (NSV at the gauged level − NSV at that level with the same temperature and density), 0 while a discharge into the tank is open. Endurance: ready stock of the product ÷ (NSV of its gantry batch records over the last 7 days ÷ 7). `{\"data\": []}` without a `[reconcile]` site model.",
            "responses": responses(list_of("Kpis", "One report (none without a site model)."), &["400", "403"])
        } },
        "/api/v1/site-model": { "get": {
            "tags": ["data"], "operationId": "siteModel", "x-required-role": "viewer",
            "summary": "The `[reconcile]` site model without file paths: tanks, meters, stations and places, trucks, tolerances. `{\"data\": []}` without one.",
            "responses": responses(list_of("SiteModel", "One model (none when not configured)."), &["400", "403"])
        } },
        "/api/v1/track": { "get": {
            "tags": ["data"], "operationId": "truckTrack", "x-required-role": "viewer",
            "summary": "A truck's GPS fixes in [from, to) (at most 2 days) and its stops by `[reconcile.stops]` (place null = outside every known place).",
            "parameters": [ param("truck"), param("from"), param("to") ],
            "responses": responses(list_of("TruckTrack", "One track."), &["400", "403", "404"])
        } }
    });
    let params = json!({
        "truck": { "name": "truck", "in": "query", "required": true, "description": "Truck id of the site model.", "schema": { "type": "string" } }
    });
    let schemas = json!({
        "WhoAmI": { "type": "object", "required": ["name", "role", "can_audit", "can_operate", "now_ms", "clock", "clock_speed"], "properties": {
            "clock": { "type": "string", "enum": ["real", "simulated"], "description": "The server's data clock: `simulated` when FLOWSQUARE_CLOCK runs sim time (the demo); every time shown comes from it." },
            "clock_speed": num("Data-clock seconds per real second (1 for the real clock)."),
            "name": s("The token's configured name."), "role": { "type": "string", "enum": ["viewer", "operator", "auditor", "admin"] },
            "can_audit": b("May read the auditor routes (dead letters, audit log)."), "can_operate": b("May post movements and start runs."),
            "now_ms": ms("The server's data clock now")
        } },
        "TankKpi": { "type": "object", "required": ["tank", "site", "product", "level_mm", "reading_ms", "stale", "gov_l", "nsv_l", "min_operating_level_mm", "ready_l", "receiving", "status"], "properties": {
            "tank": s("Tank id."), "site": s("Site."), "product": s("Product."), "level_mm": nnum("Gauged level, mm."),
            "reading_ms": nms("Oldest gauge reading used"), "stale": b("Readings older than gauge_max_age_s."),
            "gov_l": nnum("Gross observed volume, litres."), "nsv_l": nnum("Net standard volume, litres."),
            "min_operating_level_mm": num("Minimum operating level, mm."), "ready_l": nnum("NSV above the minimum operating level (0 while receiving), litres."),
            "receiving": b("A discharge into the tank is open."), "status": { "type": "string", "enum": ["ok", "stale", "receiving", "no-data"] }
        } },
        "ProductKpi": { "type": "object", "required": ["product", "tanks", "gov_l", "nsv_l", "ready_l", "tanks_without_data", "loaded_l", "daily_rate_l", "endurance_days"], "properties": {
            "product": s("Product."), "tanks": strings.clone(), "gov_l": num("Sum of GOV, litres."), "nsv_l": num("Sum of NSV, litres."),
            "ready_l": num("Sum of ready stock, litres."), "tanks_without_data": { "type": "integer", "description": "Tanks left out of the sums (no usable stock)." },
            "loaded_l": num("NSV loaded at the gantry over the rate window, litres."), "daily_rate_l": num("loaded_l ÷ rate_days, litres/day."),
            "endurance_days": nnum("ready_l ÷ daily_rate_l, days (null: nothing loaded).")
        } },
        "Kpis": { "type": "object", "required": ["now_ms", "rate_days", "gauge_max_age_s", "tanks", "products"], "properties": {
            "now_ms": ms("The server's time the figures are for"), "rate_days": { "type": "integer", "description": "Days the loading rate averages (7)." },
            "gauge_max_age_s": { "type": "integer", "description": "Older readings are stale, s." },
            "tanks": { "type": "array", "items": { "$ref": "#/components/schemas/TankKpi" } },
            "products": { "type": "array", "items": { "$ref": "#/components/schemas/ProductKpi" } }
        } },
        "SiteModel": { "type": "object", "required": ["sites", "tanks", "meters", "places", "trucks", "default_tolerance_pct", "gauge_max_age_s", "stale_factor", "stale_min_age_s"], "properties": {
            "sites": strings.clone(),
            "tanks": { "type": "array", "items": { "type": "object", "required": ["id", "site", "agent", "product", "level_tag", "min_operating_level_mm"], "properties": {
                "id": s("Tank."), "site": s("Site."), "agent": s("Agent."), "product": s("Product."), "level_tag": s("Level tag."), "min_operating_level_mm": num("mm.") } } },
            "meters": { "type": "array", "items": { "type": "object", "required": ["id", "site", "role", "product", "tank"], "properties": {
                "id": s("Meter."), "site": s("Site."), "role": { "type": "string", "enum": ["jetty", "gantry"] }, "product": s("Product."),
                "tank": { "type": "string", "nullable": true } } } },
            "places": { "type": "array", "items": { "type": "object", "required": ["id", "lat", "lon", "radius_m", "kind"], "properties": {
                "id": s("Id."), "lat": num("Latitude."), "lon": num("Longitude."), "radius_m": num("Radius, m."), "kind": { "type": "string", "enum": ["station", "place"] } } } },
            "trucks": { "type": "array", "items": { "type": "object", "required": ["id", "site", "agent"], "properties": {
                "id": s("Truck."), "site": s("Site."), "agent": s("Agent.") } } },
            "default_tolerance_pct": num("Default tolerance, ± %."), "gauge_max_age_s": { "type": "integer" },
            "stale_factor": num("Stale: older than this many poll intervals …"), "stale_min_age_s": { "type": "integer", "description": "… and than this, s." }
        } },
        "TruckTrack": { "type": "object", "required": ["truck", "fixes", "stops"], "properties": {
            "truck": s("Truck."),
            "fixes": { "type": "array", "description": "`[ts_ms, lat, lon]`, by time.", "items": { "type": "array", "items": { "type": "number" }, "minItems": 3, "maxItems": 3 } },
            "stops": { "type": "array", "items": { "type": "object", "required": ["from_ms", "to_ms", "lat", "lon", "place", "minutes"], "properties": {
                "from_ms": ms("First fix"), "to_ms": ms("Last fix"), "lat": num("Mean latitude."), "lon": num("Mean longitude."),
                "place": { "type": "string", "nullable": true, "description": "Known place; null = unscheduled stop." }, "minutes": num("Duration, minutes.") } } }
        } }
    });
    let merge = |doc: &mut Value, at: &str, add: Value| {
        if let (Some(Value::Object(m)), Value::Object(a)) = (doc.pointer_mut(at), add) {
            m.extend(a);
        }
    };
    merge(doc, "/paths", paths);
    merge(doc, "/components/parameters", params);
    merge(doc, "/components/schemas", schemas);
}

/// What every operation shares: the `X-Request-Id` request and response header, 429 on every
/// rate-limited route (all but the probes), and the answers of the connection layer.
/// Site-scoped tokens and the token reload (`scope.rs`, `auth.rs`).
fn add_access(doc: &mut Value) {
    doc["paths"]["/api/v1/admin/tokens/reload"] = json!({ "post": {
        "tags": ["admin"], "operationId": "reloadTokens", "x-required-role": "admin",
        "summary": "Read the `[api] tokens_file` again: tokens added, rotated and revoked without a restart (SIGHUP does the same). A file that does not load keeps the tokens in use (409, the error names the file, line and column).",
        "responses": {
            "200": { "description": "Reloaded: how many tokens are accepted now.", "content": { "application/json": { "schema": {
                "type": "object", "required": ["data"], "properties": { "data": { "type": "array", "items": {
                    "type": "object", "required": ["tokens"], "properties": { "tokens": { "type": "integer" } } } } } } } } },
            "401": { "$ref": "#/components/responses/Unauthorized" },
            "403": { "$ref": "#/components/responses/Forbidden" },
            "409": problem_response("The tokens file did not load; the previous tokens stay."),
            "500": { "$ref": "#/components/responses/Internal" }
        }
    } });
    let w = &mut doc["components"]["schemas"]["WhoAmI"];
    w["properties"]["sites"] = json!({ "type": "array", "items": { "type": "string" }, "nullable": true,
        "description": "The sites the token may see (null: every site). Every data route answers only these sites' rows; a record of another site is a 404; a write to another site a 403; the all-sites routes (dead letters, audit log, starting a run, reloading tokens) a 403." });
    w["properties"]["expires_ms"] = json!({ "type": "integer", "format": "int64", "nullable": true,
        "description": "When the token stops being accepted (UTC, epoch milliseconds; null: never). After it: 401 `token expired`." });
    if let Value::Array(req) = &mut w["required"] {
        req.push(json!("sites"));
        req.push(json!("expires_ms"));
    }
}

/// Paging (`page.rs`): `limit` and `cursor` on every list route ([`PAGED`], with its own default
/// and maximum), `next` beside `data` and the `Link` header of the next page.
fn add_paging(doc: &mut Value) {
    let link = json!({ "description": "`<path?…&cursor=…>; rel=\"next\"` when there is a next page (the request's parameters with `cursor` replaced).", "schema": { "type": "string" } });
    let next = json!({ "type": "string", "nullable": true, "description": "The cursor of the next page (pass it as `cursor`); null on the last page." });
    doc["components"]["parameters"]["cursor"] = json!({
        "name": "cursor", "in": "query", "required": false,
        "description": "Opaque: the `next` of the previous page (absent: the first page). Pages follow the list's stable order by its unique key, so rows neither repeat nor go missing between pages. A cursor that does not decode or belongs to another list: 400 naming `cursor`.",
        "schema": { "type": "string" }
    });
    for (path, p) in &PAGED {
        let name = format!("limit_{}", p.list);
        doc["components"]["parameters"][&name] = json!({
            "name": "limit", "in": "query", "required": false,
            "description": format!("Rows per page, 1 to {} (default {}).", p.max, p.default),
            "schema": { "type": "integer", "minimum": 1, "maximum": p.max, "default": p.default }
        });
        let op = &mut doc["paths"][*path]["get"];
        if let Value::Array(ps) = &mut op["parameters"] {
            ps.push(param(&name));
            ps.push(param("cursor"));
        } else {
            op["parameters"] = json!([param(&name), param("cursor")]);
        }
        let ok = &mut op["responses"]["200"];
        ok["headers"]["Link"] = link.clone();
        let schema = &mut ok["content"]["application/json"]["schema"];
        if schema.get("properties").is_some() {
            schema["properties"]["next"] = next.clone();
        }
    }
    if let Some(Value::String(d)) = doc.pointer_mut("/info/description") {
        d.push_str("\n\nLists are paged: `limit` (each list's default and maximum are in its parameters) and `cursor` (the `next` of the previous page); the answer is `{\"data\": [...], \"next\": cursor or null}` with `Link: <…>; rel=\"next\"` while there is more. Site scoping is applied before paging, so a scoped token's pages hold only its sites' rows.");
    }
}

fn add_robustness(doc: &mut Value) {
    let id_header = json!({ "$ref": "#/components/headers/XRequestId" });
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        for (path, item) in paths.iter_mut() {
            let limited = !matches!(path.as_str(), "/healthz" | "/readyz");
            let Value::Object(ops) = item else { continue };
            for op in ops.values_mut() {
                if let Value::Array(ps) = &mut op["parameters"] {
                    ps.push(param("XRequestId"));
                } else {
                    op["parameters"] = json!([param("XRequestId")]);
                }
                let Some(Value::Object(responses)) = op.get_mut("responses") else {
                    continue;
                };
                for r in responses.values_mut() {
                    if r.get("$ref").is_none() {
                        r["headers"]["X-Request-Id"] = id_header.clone();
                    }
                }
                if limited {
                    responses.insert(
                        "429".into(),
                        json!({ "$ref": "#/components/responses/TooManyRequests" }),
                    );
                }
            }
        }
    }
    doc["components"]["headers"] = json!({
        "XRequestId": { "description": "The request's id: the client's `X-Request-Id` when sane, else a new one (32 hex digits); also in problem bodies and the service log.", "schema": { "type": "string" } },
        "RetryAfter": { "description": "Seconds to wait.", "schema": { "type": "integer" } }
    });
    doc["components"]["parameters"]["XRequestId"] = json!({
        "name": "X-Request-Id", "in": "header", "required": false,
        "description": "An id for this request (1–128 of `A-Z a-z 0-9 - _ . : + / = @`); echoed in the response. Otherwise (or when not sane) the server makes one.",
        "schema": { "type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:+/=@-]+$" }
    });
    doc["components"]["responses"]["TooManyRequests"] = json!({
        "description": "A rate limit is exhausted (per client address, `[api] rate_limit_per_ip`; per token, `rate_limit_per_token`). Retry after `Retry-After` seconds.",
        "headers": { "Retry-After": { "$ref": "#/components/headers/RetryAfter" } },
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    });
    if let Some(Value::Object(responses)) = doc.pointer_mut("/components/responses") {
        for r in responses.values_mut() {
            r["headers"]["X-Request-Id"] = id_header.clone();
        }
    }
    if let Some(Value::String(d)) = doc.pointer_mut("/info/description") {
        d.push_str(concat!(
            "\n\nEvery response carries `X-Request-Id` (the client's when sane, else a new one); problem bodies repeat it in `request_id`. ",
            "Before routing, the server answers problem+json itself: 400 (malformed request line or header), 408 (request head not complete within `[api] header_timeout_ms`), ",
            "414 (request target over 8 KiB), 431 (head over 32 KiB or more than 64 header lines), 503 (closed at the connection limit or at shutdown), each with `Connection: close`. ",
            "429: a rate limit (per client address or per token) is exhausted (`Retry-After`). CORS is answered only for `[api] cors_origins`."
        ));
    }
}
