"""What every other package stands on, with nothing of ours beneath it.

    config         settings read once from the environment, validated
    secrets        values in AWS Secrets Manager (database credentials, the origin secret), cached
    errors         the domain exceptions (mapped to HTTP in shared.http.errors)
    observability  JSON logs and EMF metrics through Powertools, for every function
    dicom_index    the PHI-free DICOM attributes a scan keeps (imaging, db and the API share it)
    front_door     lazy package front doors: a name loads its module on first use

Imported by module (`from shared.core.config import get_settings`): this file imports nothing, so a
function pays only for the modules it uses.
"""
