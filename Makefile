# Quick start: `make demo`, then `make test`. `make help` lists everything.
SHELL := bash
.DEFAULT_GOAL := help

.PHONY: help up down status demo test unit lint fmt crds build

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

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

unit: ## Fast tests only (no test bed)
	cargo test --all-targets --locked

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

fmt: ## Format the code
	cargo fmt --all

crds: ## Regenerate crds/ from the Rust types
	cargo run --quiet --locked --bin crdgen > crds/ec2instance.yaml

build: ## Build the operator
	cargo build --locked --bin ec2-operator
