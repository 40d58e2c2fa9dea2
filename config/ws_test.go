package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWSMaxMessageBounds(t *testing.T) {
	for in, ok := range map[string]bool{"124": false, "125": true, "65536": true, "16777216": true, "16777217": false, "-1": false} {
		path := filepath.Join(t.TempDir(), "c.toml")
		os.WriteFile(path, []byte("[comet]\nws_max_message = "+in+"\n"), 0o644)
		_, err := Load(path)
		if ok != (err == nil) || err != nil && !strings.Contains(err.Error(), "comet.ws_max_message") {
			t.Errorf("ws_max_message = %s: %v", in, err)
		}
	}
}
