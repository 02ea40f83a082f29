"""Makes an Azure IoT Hub SAS token with Microsoft's SDK (azure-iot-device) at a fixed expiry:
sas_token.py HOSTNAME DEVICE_ID BASE64_KEY EXPIRY. Prints the token.

The SDK's RenewableSasToken sets its expiry to time.time() + ttl; its clock is pinned so that
the expiry is the one given, and everything else (URI encoding, HMAC, token layout) is the
SDK's own.
"""
import sys
import types

from azure.iot.device.common.auth import sastoken
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism
from azure.iot.device.iothub.abstract_clients import _form_sas_uri

hostname, device_id, key, expiry = sys.argv[1:5]
ttl = 3600
sastoken.time = types.SimpleNamespace(time=lambda: int(expiry) - ttl)
uri = _form_sas_uri(hostname=hostname, device_id=device_id)
token = sastoken.RenewableSasToken(uri, SymmetricKeySigningMechanism(key), ttl=ttl)
assert token.expiry_time == int(expiry), token.expiry_time
print(str(token))
