// Plays a package in Debian's headless Chromium, its HLS playlist with hls.js or its DASH MPD
// with dash.js, and reports as JSON on stdout which variants the player offers and, for each,
// whether it played: selected, its segments buffered, frames decoded and the clock moving; and
// the languages of the subtitle tracks it offers; and the audio tracks it offers, the one it
// picked first, and for each language whether it played after switching to it (its track
// current, a segment of its folder buffered, the clock moving). tests/test_codecs.py asserts on it.
//
//   node play.mjs <job.json>
//   job: {"player": "hls" | "dash", "page": "http://127.0.0.1:PORT/",
//         "manifest": "hls/master.m3u8", "chromium": "/usr/bin/chromium",
//         "clearkey"?: {"kid": HEX, "key": HEX}}   (dash: CENC segments, W3C Clear Key)
//
// `page` is any page of the server that serves the package (same origin, so no CORS).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { launch } from "./chromium.mjs";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const scripts = {
  hls: "hls.js/dist/hls.min.js",
  dash: "dashjs/dist/modern/umd/dash.all.min.js",
};
const library = fileURLToPath(new URL(`node_modules/${scripts[job.player]}`, import.meta.url));
const { context, close } = await launch(job.chromium, {
  args: ["--autoplay-policy=no-user-gesture-required"],
});

let report;
try {
  const page = await context.newPage();
  await page.goto(job.page, { waitUntil: "domcontentloaded", timeout: 60000 });
  await page.addScriptTag({ path: library });
  report = await page.evaluate(async ({ player, manifest, clearkey }) => {
    // W3C Clear Key: key id and key (hex) as base64url, as the EME spec has them
    const b64url = (hex) =>
      btoa(String.fromCharCode(...hex.match(/../g).map((h) => parseInt(h, 16))))
        .replace(/=+$/, "")
        .replace(/\+/g, "-")
        .replace(/\//g, "_");
    const clearKeyData = ({ kid, key }) => ({
      "org.w3.clearkey": { clearkeys: { [b64url(kid)]: b64url(key) } },
    });
    const video = document.createElement("video");
    video.muted = true;
    document.body.appendChild(video);
    const errors = [];
    const buffered = new Set(); // ids of the variants with a segment in the buffer
    const audioFolders = new Set(); // the folders of the audio segments buffered
    const langOf = (track) => track?.lang || "und";
    const folder = (url) => new URL(url, location.href).pathname.split("/").slice(-2)[0];
    const within = (promise, ms, what) =>
      Promise.race([
        promise,
        new Promise((_, fail) => setTimeout(() => fail(new Error(`no ${what} in ${ms} ms`)), ms)),
      ]);
    // How long a variant or language may take to start playing: on a loaded CI machine (the
    // other test worker encoding beside it) an encrypted H.264 variant once took over 20 s.
    const PLAY_WAIT_MS = 45000;
    const wait = async (ok, ms) => {
      for (const end = Date.now() + ms; Date.now() < end; ) {
        if (ok()) return true;
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    };

    // Each adapter lists the variants ({id, uri, codecs, height}) and plays one of them from the
    // start in a player of its own (`open(variant)`), returning what it plays now.
    const adapters = {
      async hls() {
        const Hls = window.Hls;
        let hls = null;
        const open = async (index) => {
          hls?.destroy();
          hls = new Hls({ startLevel: index ?? 0, capLevelToPlayerSize: false });
          hls.on(Hls.Events.ERROR, (_, d) => errors.push(`${d.details} fatal=${d.fatal}`));
          hls.on(Hls.Events.FRAG_BUFFERED, (_, d) => {
            if (d.frag.type === "audio") audioFolders.add(folder(d.frag.url));
            else buffered.add(String(d.frag.level));
          });
          const parsed = new Promise((r) => hls.on(Hls.Events.MANIFEST_PARSED, r));
          hls.loadSource(manifest);
          hls.attachMedia(video);
          await within(parsed, 30000, "MANIFEST_PARSED");
          if (index !== undefined) hls.currentLevel = index; // and no ABR switching after
          return hls;
        };
        const listed = (await open()).levels.map((level, i) => ({
          id: String(i),
          uri: level.url[0].split("/").slice(-2).join("/"),
          codecs: level.videoCodec,
          height: level.height,
        }));
        return {
          variants: listed,
          subtitles: hls.subtitleTracks.map((t) => t.lang),
          audio: hls.audioTracks.map((t) => ({ lang: langOf(t), name: t.name })),
          firstAudio: langOf(hls.audioTracks[hls.audioTrack]),
          play: async (v) => (await open(Number(v.id)), () => String(hls.currentLevel)),
          playAudio: async (lang) => {
            await open(0);
            hls.audioTrack = hls.audioTracks.findIndex((t) => langOf(t) === lang);
            return () => langOf(hls.audioTracks[hls.audioTrack]);
          },
        };
      },
      async dash() {
        const dashjs = window.dashjs;
        const events = dashjs.MediaPlayer.events;
        let dash = null;
        const open = async () => {
          dash?.reset();
          dash = dashjs.MediaPlayer().create();
          dash.updateSettings({ streaming: { abr: { autoSwitchBitrate: { video: false } } } });
          if (clearkey) dash.setProtectionData(clearKeyData(clearkey));
          dash.on(events.ERROR, (e) => errors.push(`${JSON.stringify(e.error)} fatal=true`));
          dash.on(events.FRAGMENT_LOADING_COMPLETED, (e) => {
            if (e.request.mediaType === "video") buffered.add(String(e.request.representation.id));
            if (e.request.mediaType === "audio") audioFolders.add(folder(e.request.url));
          });
          const ready = new Promise((r) => dash.on(events.STREAM_INITIALIZED, r));
          dash.initialize(video, manifest, false);
          await within(ready, 30000, "STREAM_INITIALIZED");
          return dash;
        };
        const listed = [];
        const first = await open();
        first.getTracksFor("video").forEach((track, t) => {
          first.setCurrentTrack(track);
          for (const rep of first.getRepresentationsByType("video")) {
            listed.push({ id: String(rep.id), uri: `${rep.codecs} ${rep.height}p`, t, ...rep });
          }
        });
        return {
          variants: listed.map(({ id, uri, codecs, height }) => ({ id, uri, codecs, height })),
          subtitles: first.getTracksFor("text").map((t) => t.lang),
          audio: first.getTracksFor("audio").map((t) => ({ lang: langOf(t) })),
          firstAudio: langOf(first.getCurrentTrackFor("audio")),
          playAudio: async (lang) => {
            await open();
            dash.setCurrentTrack(dash.getTracksFor("audio").find((t) => langOf(t) === lang));
            return () => langOf(dash.getCurrentTrackFor("audio"));
          },
          play: async (v) => {
            const { t } = listed.find((l) => l.id === v.id);
            await open();
            dash.setCurrentTrack(dash.getTracksFor("video")[t]); // one AdaptationSet a codec
            dash.setRepresentationForTypeById("video", v.id, true);
            return () => String(dash.getCurrentRepresentationForType("video")?.id);
          },
        };
      },
    };

    const { variants, subtitles, audio, firstAudio, play, playAudio } = await adapters[player]();
    const frames = () => video.getVideoPlaybackQuality().totalVideoFrames;
    const played = [];
    for (const v of variants) {
      buffered.clear();
      const current = await play(v);
      const before = { frames: frames(), time: video.currentTime };
      await video.play();
      const ok = await wait(
        () =>
          current() === v.id &&
          buffered.has(v.id) &&
          frames() > before.frames + 10 &&
          video.currentTime > before.time + 0.3,
        PLAY_WAIT_MS,
      );
      played.push({
        uri: v.uri,
        codecs: v.codecs,
        height: v.height,
        played: ok,
        seen: { current: current(), buffered: [...buffered], frames: frames() - before.frames },
      });
    }
    const audioPlayed = [];
    for (const { lang } of audio) {
      audioFolders.clear();
      const current = await playAudio(lang);
      const before = video.currentTime;
      await video.play();
      const ok = await wait(
        () =>
          current() === lang &&
          [...audioFolders].some((f) => f.endsWith(`_${lang}`)) &&
          video.currentTime > before + 0.3,
        PLAY_WAIT_MS,
      );
      audioPlayed.push({ lang, played: ok, seen: { current: current(), folders: [...audioFolders] } });
    }
    return {
      variants: played,
      subtitles,
      audio,
      firstAudio,
      audioPlayed,
      errors,
      supported: Object.fromEntries(
        ["avc1.640028", "hvc1.1.6.L60.90", "av01.0.00M.08"].map((c) => [
          c,
          window.MediaSource.isTypeSupported(`video/mp4; codecs="${c}"`),
        ]),
      ),
    };
  }, job);
} finally {
  await close();
}
process.stdout.write(JSON.stringify(report) + "\n");
