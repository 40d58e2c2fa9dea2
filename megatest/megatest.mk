# megatest's make targets; the main Makefile includes this file and builds
# bin/megatest itself (`make megatest`).
#
#   make dist            dist/megatest-linux-amd64 and -arm64: static, ready
#                        to copy to load boxes, with SHA256SUMS
#   make c1m             one million connections on this machine (megabench:
#                        kernel tuning, the loopback floor, a manager with
#                        enough workers, megatest with broadcasts and pings),
#                        c1m-report.json and its table; see docs/C1M.md
#                        (N=, RATE=, BROADCAST=, HOLD=, TRANSPORT=, HEARTBEAT= override)
#   make megatest-fuzz   each megatest fuzz target for 30 s

DIST               ?= dist
MEGATEST_PLATFORMS ?= linux-amd64 linux-arm64

.PHONY: dist c1m megatest-fuzz

dist:
	@mkdir -p $(DIST)
	@for p in $(MEGATEST_PLATFORMS); do \
	  echo "megatest $$p"; \
	  GOOS=$${p%-*} GOARCH=$${p#*-} $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(DIST)/megatest-$$p ./cmd/megatest || exit 1; \
	done
	cd $(DIST) && sha256sum megatest-* > SHA256SUMS

c1m: megabench
	$(MEGABENCH) -kind c1m -n $(or $(N),1000000) -rate $(or $(RATE),15000) -hold $(or $(HOLD),30s) \
	  -broadcast $(or $(BROADCAST),3) -out c1m-report.json

megatest-fuzz:
	@for f in $$($(GO) test -list '^Fuzz' ./megatest | grep '^Fuzz'); do \
	  $(GO) test ./megatest -run '^$$' -fuzz "^$$f\$$" -fuzztime $(or $(FUZZTIME),30s) || exit 1; \
	done
