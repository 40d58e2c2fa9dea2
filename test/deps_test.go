package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// make deps (test/deps.sh) installs the package of each missing command
// and nothing else, never Debian's npm beside a Node.js that is not
// Debian's, and nothing at all when everything is there. It runs here
// against stand-ins: a PATH holding only the commands of each case, and an
// apt-get and npm that write down what they were asked.
func TestDepsInstallsOnlyWhatIsMissing(t *testing.T) {
	script, _ := filepath.Abs("deps.sh")
	base := t.TempDir() // the few real tools the script itself uses
	for _, tool := range []string{"bash", "id", "readlink", "mktemp", "cat", "rm", "dirname", "chmod"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		os.Symlink(p, filepath.Join(base, tool))
	}
	for _, tc := range []struct {
		name     string
		have     []string // commands on the machine
		debNode  bool     // node is Debian's package
		npmTree  bool     // test/node's modules are installed as locked
		apt, npm string   // what apt-get and npm must have been asked ("" = nothing)
		fail     string   // the script must fail saying this
	}{
		{name: "everything there", have: []string{"curl", "chromium", "node", "npm", "systemd-analyze", "nats-server", "promtool", "nginx", "haproxy"}, npmTree: true},
		{name: "fresh machine", have: []string{"curl", "node", "npm", "systemd-analyze", "nats-server", "promtool", "nginx", "haproxy"},
			apt: "update -qq\ninstall -y -qq --no-install-recommends chromium", npm: "ci --no-audit --no-fund --loglevel=error"},
		{name: "no node", have: []string{"curl", "chromium", "systemd-analyze", "nats-server", "promtool", "nginx", "haproxy"}, npmTree: true,
			apt: "update -qq\ninstall -y -qq --no-install-recommends nodejs npm"},
		{name: "Debian's node without npm", have: []string{"curl", "chromium", "node", "systemd-analyze", "nats-server", "promtool", "nginx", "haproxy"}, debNode: true, npmTree: true,
			apt: "update -qq\ninstall -y -qq --no-install-recommends npm"},
		{name: "another node without npm", have: []string{"curl", "chromium", "node", "systemd-analyze", "nats-server", "promtool", "nginx", "haproxy"},
			fail: "has no npm beside it"},
		{name: "no nats-server", have: []string{"curl", "chromium", "node", "npm", "systemd-analyze", "promtool", "nginx", "haproxy"}, npmTree: true,
			apt: "update -qq\ninstall -y -qq --no-install-recommends nats-server"},
		{name: "nothing", npmTree: true,
			apt: "update -qq\ninstall -y -qq --no-install-recommends curl chromium systemd nats-server prometheus nginx haproxy nodejs npm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := t.TempDir()
			log := filepath.Join(t.TempDir(), "log")
			stub := func(name, body string) {
				os.WriteFile(filepath.Join(bin, name), []byte("#!"+filepath.Join(base, "bash")+"\n"+body+"\n"), 0o755)
			}
			for _, c := range tc.have {
				stub(c, "exit 0")
			}
			npmLs := "exit 1"
			if tc.npmTree {
				npmLs = "exit 0"
			}
			npm := `[ "$1" = ls ] && { ` + npmLs + `; }; echo "$*" >> ` + log + ".npm"
			if slices.Contains(tc.have, "npm") {
				stub("npm", npm)
			}
			dpkg := "exit 1"
			if tc.debNode {
				dpkg = "exit 0"
			}
			stub("dpkg", dpkg)
			// apt-get installs npm as the npm stand-in (the rest need no
			// stand-in after the install).
			os.WriteFile(filepath.Join(bin, ".npm"), []byte(npm+"\n"), 0o644)
			stub("apt-get", `echo "$*" >> `+log+`.apt; for p in "$@"; do [ "$p" = npm ] && { echo '#!`+filepath.Join(base, "bash")+`' > `+bin+`/npm; cat `+bin+`/.npm >> `+bin+`/npm; chmod +x `+bin+`/npm; }; done; exit 0`)
			cmd := exec.Command(filepath.Join(base, "bash"), script)
			cmd.Env = []string{"PATH=" + bin + ":" + base, "HOME=" + t.TempDir(), "SBIN=" + bin}
			out, err := cmd.CombinedOutput()
			if tc.fail != "" {
				if err == nil || !strings.Contains(string(out), tc.fail) {
					t.Errorf("want a failure saying %q; err %v, output %q", tc.fail, err, out)
				}
			} else if err != nil {
				t.Errorf("deps.sh: %v\n%s", err, out)
			}
			for _, f := range []struct{ file, want string }{{log + ".apt", tc.apt}, {log + ".npm", tc.npm}} {
				got, _ := os.ReadFile(f.file)
				if strings.TrimSpace(string(got)) != f.want {
					t.Errorf("%s was asked %q, want %q; output:\n%s", filepath.Ext(f.file)[1:], got, f.want, out)
				}
			}
		})
	}
}
