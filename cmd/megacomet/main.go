// Command megacomet is the comet server: the manager by default, a worker
// when the manager re-executes it, and the stats client.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/megacomet/megacomet/auth"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/ipc"
	"github.com/megacomet/megacomet/manager"
	"github.com/megacomet/megacomet/worker"
)

// installedConfig is where `make install` puts the config; `megacomet
// stats` falls back to the socket it names.
const installedConfig = "/etc/megacomet/megacomet.toml"

const usage = `usage:
  megacomet [run] [-config FILE]        start the manager and its workers
  megacomet -t -config FILE             check a config file and exit (0 = valid)
  megacomet stats [-json] [-socket PATH] [-config FILE]
                                        show the running manager's stats
  megacomet token -id ID [-channels a,b] [-ttl 1h] [-config FILE]
                                        print a client token signed with auth.secret
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runManager(args, stdout, stderr)
	case "stats":
		err = runStats(args, stdout)
	case "token":
		err = runToken(args, stdout)
	case "worker":
		return worker.Main()
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = fmt.Errorf("unknown command %q\n%s", cmd, usage)
	}
	if err == flag.ErrHelp {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "megacomet:", err)
		return 1
	}
	return 0
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Print(usage)
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func runManager(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run")
	path := fs.String("config", "", "config file (TOML); built-in defaults without it")
	check := fs.Bool("t", false, "check the config file and exit")
	if err := parse(fs, args); err != nil {
		return err
	}
	opts, err := config.Load(*path)
	if err != nil {
		return err
	}
	if *check {
		name := *path
		if name == "" {
			name = "built-in defaults"
		}
		for _, w := range warnings(*path, &opts) {
			fmt.Fprintln(stderr, "megacomet: warning:", w)
		}
		fmt.Fprintf(stdout, "%s: ok\n", name)
		return nil
	}
	var lvl slog.Level
	lvl.UnmarshalText([]byte(opts.Manager.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("role", "manager")
	for _, w := range warnings(*path, &opts) {
		log.Warn(w)
	}
	if p := os.Getenv("MEGACOMET_CPUPROFILE"); p != "" {
		// The manager's CPU profile, written when it stops: PATH.PID.
		f, err := os.Create(fmt.Sprintf("%s.%d", p, os.Getpid()))
		if err != nil {
			return fmt.Errorf("MEGACOMET_CPUPROFILE: %w", err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	return manager.Run(opts, *path, log)
}

// warnings are what -t prints and the manager logs at start of a config
// (read from path) that works but is risky, one line each.
func warnings(path string, o *config.Options) []string {
	var out []string
	for _, w := range []string{sharedKeyWarning(&o.Auth), configModeWarning(path, o)} {
		if w != "" {
			out = append(out, w)
		}
	}
	return out
}

// sharedKeyWarning is what -t and the manager's log say of an HS256 secret
// that no aud or iss narrows: whoever holds it (the issuer, the other apps
// it serves) signs tokens that are good here too. "" = nothing to say.
func sharedKeyWarning(a *config.Auth) string {
	if a.Secret == "" || a.Audience != "" || a.Issuer != "" {
		return ""
	}
	return "auth.secret (HS256) without auth.audience or auth.issuer: a token signed with the secret for another app is good here too"
}

// configModeWarning is what -t and the manager's log say of a config file
// that holds secrets (the keys are named, never the values) and that users
// besides the server's can read. A group-readable file is fine when the
// group is the server's own (chmod 640, chgrp to it). "" = nothing to say.
func configModeWarning(path string, o *config.Options) string {
	if path == "" {
		return ""
	}
	keys := o.SecretKeys()
	fi, err := os.Stat(path)
	if len(keys) == 0 || err != nil {
		return ""
	}
	perm := fi.Mode().Perm()
	gid := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		gid = int(st.Gid)
	}
	var who string
	switch group := perm&0o040 != 0 && gid != os.Getegid(); {
	case group && perm&0o004 != 0:
		who = "its group and all users"
	case perm&0o004 != 0:
		who = "all users"
	case group:
		who = "group " + groupName(gid)
	default:
		return ""
	}
	return fmt.Sprintf("%s holds %s and is readable by %s (mode %04o): chmod 600 %s with the server's user owning it, or chmod 640 with a group only that user is in",
		path, strings.Join(keys, ", "), who, perm, path)
}

func groupName(gid int) string {
	id := strconv.Itoa(gid)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name + " (gid " + id + ")"
	}
	return "gid " + id
}

func runStats(args []string, stdout io.Writer) error {
	fs := newFlags("stats")
	asJSON := fs.Bool("json", false, "print the raw stats JSON")
	socket := fs.String("socket", "", "stats socket (default: the one the config names)")
	path := fs.String("config", "", "config file naming the socket")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *socket == "" {
		opts, err := config.Load(*path)
		if err != nil {
			return err
		}
		*socket = opts.Manager.Socket
		if *path == "" {
			// Not the developer default? Then the installed config's.
			if _, err := os.Stat(*socket); err != nil {
				if inst, err := config.Load(installedConfig); err == nil {
					*socket = inst.Manager.Socket
				}
			}
		}
	}
	// The manager answers at once, but on a box at a load of 100+ it may
	// wait its turn for a CPU.
	raw, err := manager.FetchStats(*socket, 10*time.Second)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err = stdout.Write(raw)
		return err
	}
	if err := manager.PrintStats(stdout, raw); err != nil {
		return errors.New(err.Error())
	}
	return nil
}

// runToken prints a client token for scripts and tests: HS256 with the
// config's auth.secret.
func runToken(args []string, stdout io.Writer) error {
	fs := newFlags("token")
	id := fs.String("id", "", "the client id the token is for (its sub)")
	chans := fs.String("channels", "", "the channels it may join, comma-separated (prefix* allowed, * for any); none: auth.default_channels")
	pub := fs.String("publish", "", "the channels it may publish to over WebSocket, comma-separated (prefix* or * allowed); none: no publishing")
	ttl := fs.Duration("ttl", time.Hour, "how long it is valid")
	path := fs.String("config", "", "config file with auth.secret (default: "+installedConfig+" when it exists)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *path == "" {
		if _, err := os.Stat(installedConfig); err == nil {
			*path = installedConfig
		}
	}
	opts, err := config.Load(*path)
	if err != nil {
		return err
	}
	switch {
	case *id == "":
		return errors.New("token: -id is required")
	case !ipc.ValidName(*id):
		return fmt.Errorf("token: -id %q: use 1 to 64 of A-Z a-z 0-9 _ -", *id)
	case opts.Auth.Secret == "" && opts.Auth.PublicKeyPEM != "":
		return errors.New("token: the config checks tokens with auth.public_key: its issuer signs them, with the private key")
	case opts.Auth.Secret == "":
		return errors.New("token: the config has no auth.secret to sign with")
	case *ttl <= 0:
		return fmt.Errorf("token: -ttl %s: must be positive", *ttl)
	}
	var channels []string
	if *chans != "" {
		channels = strings.Split(*chans, ",")
	}
	c := auth.Claims{Channels: channels}
	if *pub != "" {
		c.Publish = strings.Split(*pub, ",")
	}
	if a := opts.Auth.Audience; a != "" {
		c.Audience = []string{a}
	}
	c.Issuer = opts.Auth.Issuer
	tok, err := auth.MintClaims([]byte(opts.Auth.Secret), *id, c, *ttl, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
