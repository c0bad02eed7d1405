"""schemathesis hooks for the fuzz stage (loaded through schemathesis.toml).

openapi.yaml describes `GET /openapi.yaml` as `application/yaml` with the
schema `{ type: string }`: the body is the YAML text of the contract.
schemathesis would parse YAML bodies and validate the parsed document (an
object) against that schema, which can never pass. This keeps the contract's
reading: the body must be well-formed YAML, and what is validated against
the schema is its text. If the contract changes to describe the parsed
document instead (`type: object`, as for /openapi.json), delete this file and
the `hooks` line in schemathesis.toml.
"""

import schemathesis
import yaml


# schemathesis treats all YAML media types as one family and takes the first
# deserializer registered for any of them, so replace the built-in one for
# each (healthd itself only sends application/yaml).
@schemathesis.deserializer("text/yaml", "text/x-yaml", "application/x-yaml", "text/vnd.yaml", "application/yaml")
def yaml_as_text(ctx, response):
    text = response.content.decode(response.encoding or "utf-8")
    yaml.safe_load(text)  # raises (and fails the case) when it is not YAML
    return text
