# Quick start: `make demo`, then `make test`. `make help` lists everything.
SHELL := bash
.DEFAULT_GOAL := help

.PHONY: help up down status demo test test-chaos test-gitops test-docs test-install bench bench-peers unit lint fmt crds build image helm

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up: ## Start the test bed (kube-apiserver + etcd, LocalStack EC2) or reuse it
	@hack/bed.sh up

down: ## Stop the test bed and the demo operator
	@hack/bed.sh down

status: ## Is the test bed up?
	@hack/bed.sh status

demo: ## Sandbox + operator + examples/, shown Ready
	@hack/demo.sh

test: ## All tests: unit, mocks, CRD staleness, end-to-end on the test bed
	@hack/test.sh

test-chaos: ## 200 objects under EC2 faults, operator kills, API server and LocalStack outages
	@hack/test.sh chaos

test-docs: ## The tutorial (docs/tutorial.md, docs/tutorial.ko.md) run on the test bed, its output checked
	@hack/test.sh docs

test-gitops: ## A real Argo CD (built from its Go module) syncing Ec2Instance objects from git on the bed
	@hack/test.sh gitops

test-install: ## Helm chart on the bed's real node: install, reconcile, upgrade, leader failover, uninstall
	@hack/test-install.sh

bench: ## Fleet benchmark (N=1000; N=100 is quick): prints a table, writes bench/results/
	@hack/bench.sh fleet

bench-peers: ## The same fleet with ACK's ec2-controller v1.9.2, side by side
	@hack/bench.sh peers

unit: ## Fast tests only (no test bed)
	cargo test --all-targets --locked

lint: ## rustfmt and clippy (warnings are errors), parliament on the IAM policy, actionlint, the tutorial's two languages
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	@hack/iam-lint.sh
	@hack/actionlint.sh
	@python3 hack/docs_runner.py --check docs/tutorial.md docs/tutorial.ko.md

fmt: ## Format the code
	cargo fmt --all

crds: build ## Regenerate crds/ from the Rust types
	@# Through a temp file, so a failed run never leaves an empty CRD behind.
	target/debug/crdgen > crds/.ec2instance.yaml.tmp
	mv crds/.ec2instance.yaml.tmp crds/ec2instance.yaml
	cp crds/ec2instance.yaml deploy/helm/ec2-operator/crds/ec2instance.yaml

# One dev build for everything (demo, tests, crdgen): `--all-targets` turns on the dev-dependencies'
# features (aws-smithy-mocks' test-util), and any build without them, such as `cargo run --bin`,
# would compile aws-sdk-ec2 a second time (about 6 minutes on 2 cores).
build: ## Build the operator, crdgen and the tests (debug)
	cargo build --locked --all-targets

image: ## Container image localhost/ec2-operator:<version> (podman, from the release binary)
	@hack/image.sh build

helm: ## Build the pinned helm (v3.22.0) from the Go module proxy into .cache/bin
	@hack/helm.sh install
