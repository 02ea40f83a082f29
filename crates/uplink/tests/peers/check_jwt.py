"""Verifies a JWT with PyJWT: check_jwt.py TOKEN PUBLIC_KEY_PEM ALGORITHM AUDIENCE.

Prints the verified header and claims as JSON on one line; exits 1 with PyJWT's reason when
the token does not verify (signature, audience, expiry).
"""
import json
import sys

import jwt

token, key_file, algorithm, audience = sys.argv[1:5]
with open(key_file, "rb") as f:
    key = f.read()
try:
    claims = jwt.decode(
        token,
        key,
        algorithms=[algorithm],
        audience=audience,
        options={"require": ["exp", "iat", "aud", "sub"]},
    )
except jwt.PyJWTError as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(1)
print(json.dumps({"header": jwt.get_unverified_header(token), "claims": claims}))
