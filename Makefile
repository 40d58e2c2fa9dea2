# megacomet — the two commands that matter on a fresh machine:
#   make run    build and start the server on built-in defaults
#   make test   run every test (installs what the tests need)

GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
BIN     := bin
# Static binaries: no cgo, nothing to install on a load box but the file.
export CGO_ENABLED = 0
LDFLAGS := -s -w

.PHONY: all build megacomet megatest run test test-short deps fuzz bench vet clean

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

# What the tests need beyond Go, installed when missing: curl and Debian's
# chromium (clients nobody here wrote).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	@command -v curl >/dev/null && command -v chromium >/dev/null || { \
	  echo "installing test dependencies: curl chromium"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends curl chromium; }

# Every test, with the race detector (the server binaries the integration
# tests start are race-built too).
test: vet deps
	CGO_ENABLED=1 $(GO) test -race -shuffle=on -count=1 -timeout 12m ./...

# The fast part only: unit tests, no integration.
test-short:
	$(GO) test -short -count=1 ./config/ ./ipc/ ./worker/ ./manager/

# Short runs of every fuzz target (each parser, input split anywhere).
fuzz:
	$(GO) test ./ipc -run '^$$' -fuzz FuzzParseSplit -fuzztime 30s
	$(GO) test ./worker -run '^$$' -fuzz FuzzParseRequest -fuzztime 30s

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf $(BIN) dist

# megatest's own targets (dist, c1m) live beside its code.
-include megatest/megatest.mk
