# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two stamps: `make run` (and the everyday commands beside it) install only what the service needs,
# requirements-run.txt; `make test`, lint, package and bench add the tools of requirements-dev.txt.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-scale bench-large-upload migrate cleanup move-to-s3 move-to-postgres user token audit audit-search package sample clean-data openapi publish-web web-vendor ohif

$(RUN_STAMP): requirements-run.txt requirements-images.txt requirements.txt requirements-upload.txt requirements-migrate.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements-run.txt
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# node_modules as package-lock.json pins it, installed again only when the lockfile changes (npm ci
# empties node_modules first, so the stamp inside it goes too).
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

run: $(RUN_STAMP)
	$(PY) -m scripts.dev.run

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

# Orthanc, the yardstick of the ingest, read and DICOMweb rows, is installed first where apt can (root
# or passwordless sudo); elsewhere one line says why those rows are skipped and the rest runs.
bench: $(STAMP)
	@scripts/bench/ensure-orthanc.sh
	$(PY) -m scripts.bench.main

# The scan routes at 10,000 and 100,000 scans in one database (fresh `ctscan_bench_scale`), 100k/10k ratios.
bench-scale: $(STAMP)
	$(PY) -m scripts.bench.scale

# The largest presigned upload through the real flow against moto's S3 server: time of each step and
# the peak memory of /complete in a process of its own (sizes the upload function): make bench-large-upload [MB=480]
bench-large-upload: $(STAMP)
	$(PY) -m scripts.bench.large_upload --mb '$(or $(MB),480)'

# The migrations, then the DICOMweb backfill (DICOM scans stored before migration 010 described for
# DICOMweb, to the end here: no time limit): prints the report (README, "The DICOMweb backfill").
migrate: $(RUN_STAMP)
	$(PY) -m scripts.ops.manage migrate

# The nightly cleanup function's job, here and now (expired sessions, old throttle and audit rows,
# VACUUM when dead rows pass the threshold): prints its JSON report.
cleanup: $(RUN_STAMP)
	$(PY) -m scripts.ops.manage cleanup

# Move existing images between the tiers, online, verified and resumable (shared/jobs/tiering.py), with
# a progress bar on stderr and the JSON report at the end. Both need IMAGES_BUCKET and AWS credentials
# (locally a moto server: AWS_ENDPOINT_URL_S3=http://127.0.0.1:PORT, any test credentials, AWS_REGION).
# make move-to-s3 [OLDER_THAN=30d] [MIN_BYTES=...] [LIMIT=...]   (MIN_BYTES defaults to STORAGE_TIER_S3_MIN_BYTES)
move-to-s3: $(RUN_STAMP)
	@$(PY) -m scripts.ops.manage move-to-s3 $(if $(OLDER_THAN),--older-than '$(OLDER_THAN)') \
		$(if $(MIN_BYTES),--min-bytes '$(MIN_BYTES)') $(if $(LIMIT),--limit '$(LIMIT)')

# make move-to-postgres [LIMIT=...]: images over 4.4 MB stay in S3 (the report lists them as "kept").
move-to-postgres: $(RUN_STAMP)
	@$(PY) -m scripts.ops.manage move-to-postgres $(if $(LIMIT),--limit '$(LIMIT)')

# Offline: no AWS credentials are needed (or used) to package and lint the stack.
TEMPLATE := .serverless/cloudformation-template-update-stack.json
# CPython 3.12, the Lambda runtime's version, to precompile bytecode into the packages.
LAMBDA_PYTHON ?= $(shell scripts/build/find-lambda-python.sh)
export LAMBDA_PYTHON
# osls runs scripts/build/lambda_packages.py (infra/plugins/python-packages.js) with this Python:
# one zip per function in .serverless/, each with only its own libraries.
BUILD_PYTHON ?= $(PY)
export BUILD_PYTHON
package: $(STAMP) $(NODE_STAMP)
	env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE \
		npx --no-install osls package --stage ci
	$(VENV)/bin/cfn-lint $(TEMPLATE) -i W3005
	$(PY) -m scripts.build.package_report .serverless/*.zip

# After `npx osls deploy --stage $(STAGE)`: web/ and a generated config.json to the stack's bucket, then
# a CloudFront invalidation (scripts/web/publish.py). Needs AWS credentials; REGION defaults to AWS_REGION
# or serverless.yml's.
publish-web: $(STAMP)
	@test -n "$(STAGE)" || { echo "usage: make publish-web STAGE=prod [REGION=eu-central-1]"; exit 2; }
	$(PY) -m scripts.web.publish --stage '$(STAGE)' $(if $(REGION),--region '$(REGION)')

user: $(RUN_STAMP)
	@test -n "$(NAME)" || { echo "usage: make user NAME=alice PASSWORD=..."; exit 2; }
	@PASSWORD='$(PASSWORD)' $(PY) -m scripts.ops.manage user '$(NAME)'

token: $(RUN_STAMP)
	@test -n "$(NAME)" || { echo "usage: make token NAME=alice"; exit 2; }
	@$(PY) -m scripts.ops.manage token '$(NAME)'

# The audit trail, newest first: make audit [NAME=alice] [LIMIT=50]. It holds image reads (200, 206, 304),
# scan deletes, logins, logouts, password changes, viewer tokens, DICOMweb requests and admin actions; not
# the scan listings, a scan's JSON or uploads (README, "Audit trail").
audit: $(RUN_STAMP)
	@$(PY) -m scripts.ops.manage audit $(if $(NAME),--name '$(NAME)') --limit '$(or $(LIMIT),50)'

# Who searched for a value through DICOMweb (QIDO-RS), newest first: the trail holds each search's
# values only as keyed hashes, so this hashes VALUE under every audit key and looks the hashes up
# (shared/dicomweb/audit_search.py; audited too). KEYWORD is a QIDO-RS matching key (PatientName,
# PatientID, AccessionNumber, StudyDescription, ...); a person name matches in any case.
# make audit-search KEYWORD=PatientName VALUE='Doe^Jane' [LIMIT=50]
# (KEYWORD and VALUE reach the command through the environment: a name like O'Brien needs no quoting here.)
audit-search: $(RUN_STAMP)
	@test -n "$$KEYWORD" -a -n "$$VALUE" || { echo "usage: make audit-search KEYWORD=PatientName VALUE='Doe^Jane' [LIMIT=50]"; exit 2; }
	@$(PY) -m scripts.ops.manage audit-search --keyword "$$KEYWORD" --value="$$VALUE" --limit '$(or $(LIMIT),50)'

# A small synthetic CT series (DICOM, with known dense regions), generated here: nothing is downloaded.
sample: $(RUN_STAMP)
	$(PY) -m scripts.dev.sample samples

# Stop the embedded PostgreSQL servers and delete their data (dev and test): the next run starts fresh.
clean-data: $(RUN_STAMP)
	$(PY) -m scripts.dev.devdb stop $${PGDATA_DIR:-.data/pg} .data/test-pg
	rm -rf .data

# The OpenAPI document of every HTTP function, checked in (tests/test_openapi.py fails when it is stale).
openapi: $(STAMP)
	$(PY) -m scripts.build.openapi

# The web app's libraries (Preact, htm, jpeg-lossless-decoder-js), pinned in package-lock.json, copied from node_modules into
# web/vendor/ (checked in: `make run` needs no npm). tests/test_web_static.py fails when they differ.
web-vendor: $(STAMP) $(NODE_STAMP)
	$(PY) -m scripts.web.vendor

# OHIF, the DICOMweb viewer (MIT; fetched with npm pack and pruned into .data/ohif/ on first use), at
# http://127.0.0.1:3001/ against `make run`'s DICOMweb root, which it reaches through its own origin.
# make ohif [PORT=3001] [UPSTREAM=http://127.0.0.1:3000] [DICOMWEB_ROOT=/api/v1/dicomweb]; with
# OHIF_TOKEN set in the environment the study list at / works too (OHIF_TOKEN="$$(make -s token NAME=dev)").
ohif: $(STAMP)
	@echo "OHIF takes a bearer token in the viewer's URL: make token NAME=dev (with make run going), then open"
	@echo "  http://127.0.0.1:$(or $(PORT),3001)/viewer?StudyInstanceUIDs=<study instance UID>&token=<token>"
	$(PY) -m scripts.web.ohif --port '$(or $(PORT),3001)' --upstream '$(or $(UPSTREAM),http://127.0.0.1:3000)' \
		--dicomweb-root '$(or $(DICOMWEB_ROOT),/api/v1/dicomweb)'
