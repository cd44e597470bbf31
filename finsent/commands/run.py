"""``finsent run | worker``: the daemon.

* ``finsent run``: every role in one process (producers from configuration, HTTP ingest
  with /healthz and /metrics, scorer, trends, alerts when rules are configured), with the
  embedded broker and database when none are configured.
* ``finsent worker scorer|trends``: one role, for scale-out against a shared Kafka
  cluster (``FINSENT_KAFKA_BOOTSTRAP``) and PostgreSQL.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from finsent.daemon import Daemon, tune_interpreter
from finsent.roles import WORKER_ROLES, alert_roles, http_role, producer_roles, stream_role
from finsent.services import start_services
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="the daemon: every role in one process")
    p.set_defaults(func=run)
    p = sub.add_parser("worker", help="run one role: scorer or trends")
    p.add_argument("role", choices=list(WORKER_ROLES))
    p.set_defaults(func=worker)


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """One role until SIGTERM. Needs a shared broker: a lone worker on its own embedded
    broker would never see anyone's documents."""
    if not settings.kafka_bootstrap:
        raise ConfigurationError(
            "'finsent worker' joins a consumer group on a shared Kafka cluster: set FINSENT_KAFKA_BOOTSTRAP "
            "(or --kafka-bootstrap); to run every role in one process with an embedded broker use 'finsent run'"
        )
    tune_interpreter(settings)
    with start_services(settings) as services:
        daemon = Daemon(
            [stream_role(args.role, settings, services)],
            shutdown_grace_s=settings.shutdown_grace_s,
            durable_log=services.broker is None,
        )
        daemon.roles.append(http_role(settings, services, daemon=daemon, ingest=False))
        return daemon.run()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Every role in one process until SIGTERM."""
    tune_interpreter(settings)
    with start_services(settings) as services:
        roles: list[Any] = list(producer_roles(settings, services))
        roles += [stream_role(name, settings, services) for name in WORKER_ROLES]
        roles += alert_roles(settings, services)
        daemon = Daemon(
            roles, shutdown_grace_s=settings.shutdown_grace_s, durable_log=services.broker is None
        )
        daemon.roles.append(http_role(settings, services, daemon=daemon, ingest=True))
        log.info(
            "finsent run: broker %s; database %s",
            services.descriptions["broker"],
            services.descriptions["database"],
        )
        return daemon.run()
