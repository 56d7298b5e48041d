"""The Python client of the Quartermaster API (caller side: it never imports temporalio, never holds
a key). An agent started by `qm run` writes:

    async with QuartermasterClient.from_env() as qm:
        view = await qm.provisions.create(service_id="db/postgres", name="orders")
        view = await qm.provisions.wait(view.request_id, timeout=60)
"""

from quartermaster.client.api import QuartermasterClient
from quartermaster.client.errors import ApiError

__all__ = ["ApiError", "QuartermasterClient"]
