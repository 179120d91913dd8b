#!/bin/sh
# FlowSquare identities and topic rules for Mosquitto's dynamic-security plugin (see
# mosquitto.conf in this folder). Talks to the running broker with mosquitto_ctrl:
#
#   FS_CTRL_OPTS   mosquitto_ctrl connection options, e.g.
#                  "-h localhost -p 8883 --cafile ca.pem -u admin -P <admin password>"
#   FS_ROOT        topic root (cloud-ingest [mqtt] topic_root), default "fs"
#
#   flowsquare-dynsec.sh ingest <username> [password]
#       the cloud-ingest identity (once; again for each replica with its own username): reads
#       every agent's data (also through any $share group), births, statuses and heartbeats,
#       writes acknowledgements and commands, and its own start-up probe ($ROOT/_probe/<nonce>).
#       Also sets every default to deny.
#   flowsquare-dynsec.sh agent <site> <agent> [password]
#       an edge agent: username "<site>/<agent>", client id "fs-<site>-<agent>" (the agent's
#       default; if [uplink] client_id is set, change it with `mosquitto_ctrl ... dynsec
#       setClientId`), its own role "fs-agent-<site>-<agent>" with only its own topics.
#       Refused (exit 3) when another agent already has that role and client id (ids with
#       '-' can collide: a-b/c and a/b-c). For certificate login (mosquitto.conf) the client
#       is named by the certificate's CN "<site>/<agent>"; its password is then not used.
#
# Without a password mosquitto_ctrl asks for one. Remove an agent with
#   mosquitto_ctrl $FS_CTRL_OPTS dynsec deleteClient <site>/<agent>
set -eu
ROOT="${FS_ROOT:-fs}/v1"
ctl() {
	# shellcheck disable=SC2086 # FS_CTRL_OPTS is a list of options
	mosquitto_ctrl ${FS_CTRL_OPTS:-} dynsec "$@"
}
# Adding an ACL that is already there fails; the script may run again.
acl() {
	ctl addRoleACL "$@" 2>/dev/null || true
}
id_ok() {
	case "$1" in
	"" | *[!A-Za-z0-9_.-]*)
		echo "flowsquare-dynsec: id '$1' must be 1-64 characters of A-Z a-z 0-9 _ . -" >&2
		exit 2
		;;
	esac
}
case "${1:-}" in
ingest)
	[ $# -ge 2 ] || { echo "usage: $0 ingest <username> [password]" >&2; exit 2; }
	for t in publishClientSend publishClientReceive subscribe; do
		ctl setDefaultACLAccess "$t" deny
	done
	ctl createRole fs-ingest 2>/dev/null || true
	acl fs-ingest subscribePattern "\$share/+/$ROOT/+/+/data" allow
	for k in data birth status heartbeat; do
		acl fs-ingest subscribePattern "$ROOT/+/+/$k" allow
		acl fs-ingest publishClientReceive "$ROOT/+/+/$k" allow
	done
	for k in ack cmd; do
		acl fs-ingest publishClientSend "$ROOT/+/+/$k" allow
	done
	# The start-up delivery probe (cloud-ingest consume/probe.rs): one message to itself on
	# $ROOT/_probe/<nonce>, through the same kind of subscription ($share or plain) as the data.
	acl fs-ingest subscribePattern "\$share/+/$ROOT/_probe/+" allow
	acl fs-ingest subscribePattern "$ROOT/_probe/+" allow
	acl fs-ingest publishClientSend "$ROOT/_probe/+" allow
	acl fs-ingest publishClientReceive "$ROOT/_probe/+" allow
	if [ $# -ge 3 ]; then ctl createClient "$2" -p "$3"; else ctl createClient "$2"; fi
	ctl addClientRole "$2" fs-ingest
	;;
agent)
	[ $# -ge 3 ] || { echo "usage: $0 agent <site> <agent> [password]" >&2; exit 2; }
	id_ok "$2"
	id_ok "$3"
	role="fs-agent-$2-$3"
	# "<site>-<agent>" is ambiguous when ids hold '-' (a-b/c and a/b-c): the second would join
	# the first's role (its topics) and client id. mosquitto_ctrl exits 0 on errors, so read
	# its output. Running again for the same agent is fine.
	if ctl getRole "$role" 2>/dev/null | grep -q '^Rolename:' &&
		! ctl getClient "$2/$3" 2>/dev/null | grep -q '^Username:'; then
		echo "flowsquare-dynsec: role $role and client id fs-$2-$3 already belong to another agent (ids with '-' can collide, e.g. a-b/c and a/b-c); give this agent other ids" >&2
		exit 3
	fi
	ctl createRole "$role"
	for k in data birth status heartbeat; do
		acl "$role" publishClientSend "$ROOT/$2/$3/$k" allow
	done
	for k in ack cmd; do
		acl "$role" subscribeLiteral "$ROOT/$2/$3/$k" allow
		acl "$role" publishClientReceive "$ROOT/$2/$3/$k" allow
	done
	if [ $# -ge 4 ]; then
		ctl createClient "$2/$3" -c "fs-$2-$3" -p "$4"
	else
		ctl createClient "$2/$3" -c "fs-$2-$3"
	fi
	ctl addClientRole "$2/$3" "$role"
	;;
*)
	echo "usage: $0 ingest <username> [password] | agent <site> <agent> [password]" >&2
	exit 2
	;;
esac
