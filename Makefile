# megacomet — the two commands that matter on a fresh machine:
#   make run    build and start the server on built-in defaults
#   make test   run every test (installs what the tests need)

GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
BIN     := bin
# Static binaries: no cgo, nothing to install on a load box but the file.
export CGO_ENABLED = 0
LDFLAGS := -s -w

comma := ,
.PHONY: all build megacomet megatest run test js-test test-short deps fuzz bench microbench megabench soak cluster-bench proxy-bench vet clean install verify-unit

all: build

build: megacomet megatest

megacomet:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/megacomet ./cmd/megacomet

megatest:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/megatest ./cmd/megatest

# The manager in the foreground with the developer defaults: clients on
# :8000, API on 127.0.0.1:9000, stats socket in the temp dir. Ctrl-C stops it.
run: megacomet
	./$(BIN)/megacomet

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

# What the tests need beyond Go (curl, Debian's chromium, systemd-analyze,
# npm ws), each installed only when its command is missing; never replaces
# the machine's own Node.js or npm. A second run installs nothing.
deps:
	@test/deps.sh

# Every test, with the race detector (the server binaries the integration
# tests start are race-built too). TESTFLAGS= adds go test flags
# (-json for each test's time, -run to pick).
test: vet deps verify-unit js-test
	CGO_ENABLED=1 $(GO) test -race -shuffle=on -count=1 -timeout 40m $(TESTFLAGS) ./...

# megacomet.js's own tests (clients/js), with Node's test runner: no
# browser, no server (test/jsclient_test.go runs it in Chromium).
js-test:
	cd clients/js && node --test

# The fast part only: unit tests, no integration.
test-short:
	$(GO) test -short -count=1 ./config/ ./ipc/ ./worker/ ./manager/

# Every fuzz target in the module, found with go test -list, FUZZTIME each
# (30 s): the parsers (HTTP, WebSocket frames, IPC, megatest's), the
# publish JSON decoder, query strings and tokens. make test runs their
# seed corpora.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test $$pkg -run '^$$' -fuzz "^$$f\$$" -fuzztime $(or $(FUZZTIME),30s) || exit 1; \
	  done; \
	done

# The unit as `make install` writes it must pass systemd-analyze verify with
# no complaint at all (unknown keys are only warnings there).
verify-unit: megacomet
	@dir=$$(mktemp -d) && \
	  sed 's|/usr/local/bin/megacomet|$(CURDIR)/$(BIN)/megacomet|g' systemd/megacomet.service > $$dir/megacomet.service && \
	  out=$$(systemd-analyze verify $$dir/megacomet.service 2>&1); rc=$$?; rm -rf $$dir; \
	  if [ $$rc -ne 0 ] || [ -n "$$out" ]; then echo "systemd-analyze verify: $$out"; exit 1; fi; \
	  echo "systemd/megacomet.service: verified"

# Binaries, config, unit and kernel tuning; PREFIX and DESTDIR are honoured.
# An existing config is kept. The installed config puts the stats socket and
# pid file in /run/megacomet (the unit's RuntimeDirectory).
install: build
	install -D -m 0755 $(BIN)/megacomet $(DESTDIR)$(PREFIX)/bin/megacomet
	install -D -m 0755 $(BIN)/megatest $(DESTDIR)$(PREFIX)/bin/megatest
	install -d $(DESTDIR)$(SYSCONFDIR)/megacomet $(DESTDIR)$(SYSCONFDIR)/sysctl.d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PREFIX)/share/doc/megacomet
	[ -e $(DESTDIR)$(SYSCONFDIR)/megacomet/megacomet.toml ] || \
	  sed -e 's|^# socket = |socket = |' -e 's|^# pid_file = |pid_file = |' etc/megacomet.toml > $(DESTDIR)$(SYSCONFDIR)/megacomet/megacomet.toml
	install -m 0644 etc/sysctl.d/60-megacomet.conf $(DESTDIR)$(SYSCONFDIR)/sysctl.d/60-megacomet.conf
	sed -e 's|/usr/local|$(PREFIX)|g' -e 's|/etc/megacomet|$(SYSCONFDIR)/megacomet|g' systemd/megacomet.service > $(DESTDIR)$(UNITDIR)/megacomet.service
	install -m 0644 README.md docs/PROTOCOL.md $(DESTDIR)$(PREFIX)/share/doc/megacomet/
	@echo "installed. Next: sysctl --system && systemctl daemon-reload && systemctl enable --now megacomet"

# The Go micro-benchmarks (fan-out against the loopback floor, idle
# connection bytes, parsers).
microbench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# megabench runs megacomet and megatest together and writes a report
# (bench/): make c1m (a million), make bench (100,000 in about a minute),
# make soak (200,000 for 30 minutes, RSS drift). N=, RATE=, HOLD=,
# HEARTBEAT=, TRANSPORT=, WORKERS=, BROADCAST=, MEGATEST_FLAGS= override.
megabench: build
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/megabench ./cmd/megabench

MEGABENCH = ./$(BIN)/megabench -bin $(BIN) -transport $(or $(TRANSPORT),sse) -heartbeat $(or $(HEARTBEAT),15s) \
	-workers $(or $(WORKERS),0) -megatest-flags "$(MEGATEST_FLAGS)"

bench: megabench
	$(MEGABENCH) -kind bench -n $(or $(N),100000) -rate $(or $(RATE),20000) -hold $(or $(HOLD),15s) \
	  -broadcast $(or $(BROADCAST),3) -auth-compare -hook-compare -chat-members $(or $(CHAT),10000) -out bench-report.json

soak: megabench
	$(MEGABENCH) -kind soak -n $(or $(N),200000) -rate $(or $(RATE),15000) -hold $(or $(HOLD),30m) \
	  -pub 100 -broadcast $(or $(BROADCAST),30) -round-every 1m -sample 1m -out soak-report.json

# Nodes sharing a NATS JetStream stream (Debian's nats-server, make deps):
# what each node spends reading all of it at 10k and 100k publishes/s,
# and megatest's publish -> delivery latency across nodes.
cluster-bench: megabench
	$(MEGABENCH) -kind cluster -n $(or $(N),10000) -pub 300 -hold $(or $(HOLD),20s) -nodes $(or $(NODES),3) \
	  -rates $(or $(RATES),10000$(comma)100000) -for $(or $(FOR),20s) -out cluster-report.json

clean:
	rm -rf $(BIN) dist

# megatest's own targets (dist, c1m) live beside its code.
-include megatest/megatest.mk

# What nginx and HAProxy (docs/DEPLOY.md) cost per TLS connection next to
# megacomet's own, at N=100000 held connections: bench/proxy-cost.txt.
proxy-bench:
	N=$(or $(N),100000) bench/proxy-cost.sh
