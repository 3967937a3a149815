"""`python -m tests.kit_service`: serve the notes service until SIGTERM, settings from the environment."""

import asyncio

import uvloop

from services.foundation.host import ServiceHost
from services.foundation.logs import configure_logging
from tests.kit_service.service import SERVICE

settings = SERVICE.settings.for_service(SERVICE.name, grpc_port=0, metrics_port=0)()
configure_logging(SERVICE.name, settings.log_level)
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(ServiceHost(SERVICE, settings).serve_until_stopped())
