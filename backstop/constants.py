"""Task names, queue names, Redis keys and timings shared by every Backstop process.

All keys live under the ``backstop:`` prefix so that a shared Redis can be inspected (and
cleaned) per application. The ledger's records are Redis hashes whose values are JSON
(``backstop.runs``).
"""

from __future__ import annotations

# Queue of the control plane: dispatch, failover, follow-ups, watchdog. Any worker started
# with --control consumes it.
CONTROL_QUEUE = "backstop.control"
# Prefix of the per-RDS queues; a worker started with --rds NAME consumes RDS_QUEUE_PREFIX+NAME.
RDS_QUEUE_PREFIX = "backstop.rds."
# Every task name starts with this.
TASK_PREFIX = "backstop."

# Task names, used at every send site and by Flower.
# Start an occurrence: record it and its first run, send the run (control queue).
TASK_DISPATCH = "backstop.dispatch"
# One backup run, on the queue of the RDS of its data store.
TASK_BACKUP = "backstop.backup"
# Ad hoc from Flower: start an occurrence of an event now, as `backstop run` does
# (keyword arguments event, level, enforce_full; control queue).
TASK_RUN = "backstop.run"
# The one failover run of an occurrence whose run ended storage_unavailable (control queue).
TASK_FAILOVER = "backstop.failover"
# A `kind: verify` run, on the RDS holding the saveset it verifies.
TASK_VERIFY = "backstop.verify"
# A `kind: command` run (control queue).
TASK_COMMAND = "backstop.command"
# The migration task of a succeeded run, on the RDS of its target pool.
TASK_MIGRATE = "backstop.migrate"
# A restore written on a client by its worker (`backstop restore --client`).
TASK_RESTORE = "backstop.restore"
# The watchdog pass, sent by the leading beat (control queue).
TASK_WATCHDOG = "backstop.watchdog"
# A message about a settled occurrence to the targets of the config's notify (SPEC
# section 10), on its own queue (consumed by control workers): a retry waits there, held by
# a worker, for up to NOTIFY_RETRY_MAX_S, and the control queue's redelivery must not
# hand it to another worker meanwhile.
TASK_NOTIFY = "backstop.notify"
NOTIFY_QUEUE = "backstop.notify"
# String, set once: attempt N of the message about an occurrence to target T is taken.
NOTIFY_CLAIM_KEY = "backstop:notify:{occ}:{target}:{attempt}"
NOTIFY_CLAIM_TTL_S = 2 * 86400
# An unreachable target is tried again after 30 s, 1 min, 2 min, ... (at most 15 min
# apart) until an hour has passed since the first attempt.
NOTIFY_RETRY_FIRST_S = 30.0
NOTIFY_RETRY_MAX_S = 900.0
NOTIFY_GIVE_UP_S = 3600.0
NOTIFY_TIMEOUT_S = 10.0
# Tasks that perform a run: a revoke of one of them cancels its run.
RUN_TASKS = (TASK_BACKUP, TASK_VERIFY, TASK_COMMAND)

# Hash: worker node name -> JSON {name, rds, control, pid, host, at}; written by each
# worker's heartbeat step, removed on clean shutdown.
BEATS_KEY = "backstop:beats"  # Hash: beat name -> JSON heartbeat of a beat process
HEARTBEATS_KEY = "backstop:heartbeats"
# String: node name of the beat process that currently schedules; expires unless renewed.
BEAT_LEADER_KEY = "backstop:beat:leader"

# A worker writes its heartbeat this often, in seconds.
HEARTBEAT_INTERVAL_S = 2.0
# A worker whose last heartbeat is older than this counts as gone (and with it, the RDS it
# served, unless another worker serves it). Each heartbeat carries its own: these are an
# RDS or control worker's.
HEARTBEAT_TTL_S = 10.0
# A lean client worker (one that serves clients only) beats less often: one command every
# 15 s per client host, gone after 45 s (two beats missed), well inside the 60 s after which
# a run of its client ends client_unreachable.
CLIENT_HEARTBEAT_INTERVAL_S = 15.0
CLIENT_HEARTBEAT_TTL_S = 45.0
# Heartbeat entries older than this are dropped from the hash when status is read.
HEARTBEAT_FORGET_S = 24 * 3600.0
# The beat leader's lock lives this long unless renewed; a standby takes over after it.
BEAT_LOCK_TTL_S = 30.0
# How often a standby beat tries to become the leader, in seconds.
BEAT_STANDBY_POLL_S = 5.0


# Prefix of the per-client queues; a worker started with --client NAME consumes
# CLIENT_QUEUE_PREFIX+NAME: the backups (and restores) of that client's tasks.
CLIENT_QUEUE_PREFIX = "backstop.client."


def rds_queue(rds_name: str) -> str:
    return f"{RDS_QUEUE_PREFIX}{rds_name}"


def client_queue(client_name: str) -> str:
    return f"{CLIENT_QUEUE_PREFIX}{client_name}"

# The saveset catalog (the stores are the source of truth; `backstop catalog rebuild`
# recreates these keys from them).
# String: JSON record of one saveset, by id.
CATALOG_SAVESET_KEY = "backstop:catalog:saveset:{id}"
# Sorted set: every saveset id, scored by creation time (epoch seconds).
CATALOG_INDEX_KEY = "backstop:catalog:savesets"
# Sorted set: the saveset ids of one task, scored by creation time.
CATALOG_TASK_KEY = "backstop:catalog:task:{task}"
# Sorted set: the saveset ids of one media pool, scored by creation time.
CATALOG_POOL_KEY = "backstop:catalog:pool:{pool}"
# Set: the ids of a task's savesets whose manifest is cached (see below).
CATALOG_CACHED_KEY = "backstop:catalog:cached-manifests:{task}"
# String: compressed manifest of a saveset that may still be a base (the task's newest FULL
# and newest FULL/DIFF/INC), so a DIFF/INC works while the base's store is offline.
CATALOG_MANIFEST_KEY = "backstop:catalog:manifest:{id}"
# String: JSON {"at", "ok", "run_id"} of the task's newest FULL attempt (Enforce FULL rule a).
CATALOG_FULL_ATTEMPT_KEY = "backstop:catalog:full-attempt:{task}"

# The run ledger (orchestration/ledger.py).
# Hash: one run record (backstop.runs.Run), field -> JSON value, by run id.
RUN_KEY = "backstop:run:{run}"
# String with expiry: the process running a run; renewed while it works. A running run
# whose lease is gone may be claimed again (its process died).
RUN_LEASE_KEY = "backstop:run:{run}:lease"
# Sorted set: run ids by queue time (epoch seconds); ended runs older than the config's
# ``history`` leave it (and the ledger).
RUNS_INDEX_KEY = "backstop:runs"
# Sorted sets, scored like RUNS_INDEX_KEY: the runs of one event (as the event used or as
# the event triggered), of one task, and those that ended in one state.
RUNS_BY_EVENT_KEY = "backstop:runs:event:{event}"
RUNS_BY_TASK_KEY = "backstop:runs:task:{task}"
RUNS_BY_STATE_KEY = "backstop:runs:state:{state}"
# Set: ids of runs that are queued or running (the watchdog's work list).
RUNS_UNFINISHED_KEY = "backstop:runs:unfinished"
# Set: occurrences not settled yet (the watchdog settles those whose runs all ended).
OCCURRENCES_OPEN_KEY = "backstop:occurrences:open"
# Hash: one occurrence record (backstop.runs.Occurrence), field -> JSON value.
OCCURRENCE_KEY = "backstop:occurrence:{occ}"
# List: the run ids of one occurrence, in order (its run, then at most one failover run).
OCCURRENCE_RUNS_KEY = "backstop:occurrence:{occ}:runs"
# String, set once: the failover of this occurrence was started.
OCCURRENCE_FAILOVER_KEY = "backstop:occurrence:{occ}:failover"
# Drive channels: sorted set of run ids writing through the drive, scored by lease expiry.
DRIVE_CHANNELS_KEY = "backstop:drive:{drive}:channels"
# The ledger forgets runs past its history at most this often, this many at a time.
HISTORY_SWEEP_S = 60.0
HISTORY_SWEEP_BATCH = 500
# A run's lease lives this long unless its process renews it (every RUN_LEASE_RENEW_S).
RUN_LEASE_S = 15.0
RUN_LEASE_RENEW_S = 3.0
# The watchdog sends a queued run again when no worker has taken (or deferred) it for this
# long: its message may have died with a worker that had received it. A second message for
# a run does nothing once the run has been claimed.
RESEND_QUEUED_AFTER_S = 120.0
# A run of a client's task whose client no worker has served for this long (none took over
# from a worker that died) ends failed with client_unreachable (SPEC section 9).
CLIENT_LOST_AFTER_S = 60.0
# A control message (dispatch, failover, command, ...) unacknowledged for this long was
# taken by a worker that died: the watchdog puts it back on its queue. Used only while some
# live worker does not say in its heartbeat which messages it holds; otherwise a message no
# live worker holds goes back once it is as old as the longest heartbeat TTL of the live
# workers (orchestration/redeliver.py).
CONTROL_REDELIVER_AFTER_S = 60.0

# Metrics (orchestration/metrics.py): hashes whose fields are JSON arrays of label values,
# counted when a run ends, in the script that ends it.
METRICS_RUNS_KEY = "backstop:metrics:runs_total"
METRICS_UNAVAILABLE_KEY = "backstop:metrics:storage_unavailable_total"
METRICS_FAILOVERS_KEY = "backstop:metrics:failovers_total"
METRICS_BYTES_KEY = "backstop:metrics:backup_bytes_total"
# Failover runs of drills, by result: never in the two counters above.
METRICS_DRILLS_KEY = "backstop:metrics:drills_total"
METRICS_DURATION_KEY = "backstop:metrics:run_duration_seconds"
METRICS_LAST_SUCCESS_KEY = "backstop:metrics:last_success_timestamp_seconds"
METRICS_NOTIFY_FAILED_KEY = "backstop:metrics:notifications_failed_total"
METRICS_ERRORS_KEY = "backstop:metrics:run_errors_total"
# Hash: the watchdog's passes, what they acted on and the last pass's Unix time
# (orchestration/watchdog.py).
METRICS_WATCHDOG_KEY = "backstop:metrics:watchdog"
# String: writes no replica confirmed within broker_wait_ms (orchestration/replicas.py).
METRICS_REPLICATION_LAG_KEY = "backstop:metrics:replication_lag_total"
# String: written (INCR) just before each WAIT, so that WAIT covers every earlier write.
REPLICATION_BARRIER_KEY = "backstop:replication:barrier"
# Sorted set per pool: "epoch:used_bytes" samples, at most one per POOL_SAMPLE_EVERY_S,
# kept POOL_SAMPLES_KEPT_S (a pool's growth: days_until_full).
POOL_USED_KEY = "backstop:pool:{pool}:used"
POOL_SAMPLE_EVERY_S = 600.0
POOL_SAMPLES_KEPT_S = 35 * 86400.0
# The metrics exporter serves here unless told otherwise (SPEC section 10).
METRICS_ADDRESS = "127.0.0.1"
METRICS_PORT = 9808

# Hash: schedule name -> ISO time of the newest tick the beat handled (run, or recorded as
# missed); read by a beat when it becomes the leader.
BEAT_LAST_TICK_KEY = "backstop:beat:last-tick"
# The leading beat runs a watchdog pass this often, in seconds.
WATCHDOG_INTERVAL_S = 10.0
