// The few facts the page reads from (and the one change it makes to) SDP text, matching
// crates/client/src/sdp.rs so that both ends bind the same fingerprint bytes.
import { PAGE_OPUS_BITRATE } from './cbr.js';

/**
 * The DTLS fingerprint an SDP declares, as `"<alg> <HEX:HEX:…>"` (algorithm lowercase, hex
 * uppercase) in UTF-8 bytes; null if absent or if two occurrences disagree.
 */
export function dtlsFingerprint(sdp) {
  let found = null;
  for (const raw of sdp.split(/\r?\n/)) {
    const line = raw.trimEnd();
    if (!line.startsWith('a=fingerprint:')) continue;
    const value = line.slice('a=fingerprint:'.length).trim();
    const space = value.indexOf(' ');
    if (space < 0) return null;
    const normalised = `${value.slice(0, space).toLowerCase()} ${value.slice(space + 1).trim().toUpperCase()}`;
    if (found !== null && found !== normalised) return null;
    found = normalised;
  }
  return found === null ? null : new TextEncoder().encode(found);
}

/**
 * Sets `cbr=1`, `maxaveragebitrate=32000` (PAGE_OPUS_BITRATE) and `usedtx=0` in the Opus
 * `a=fmtp` line(s) of an SDP (and adds an fmtp line where Opus has none), replacing any value
 * the peer gave. Applied to the peer's SDP before the browser uses it, this asks the browser's
 * Opus encoder for one constant bitrate, the same in every browser whichever side offers
 * (Firefox otherwise picks 64 kbit/s when the page offers), with no DTX: with a variable
 * bitrate, packet sizes leak what is said. Browsers do not always obey (Firefox ramps up at
 * first), so the worker's gate (cbr.js) enforces one size anyway.
 */
export function forceOpusCbr(sdp) {
  const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
  const lines = sdp.split(/\r?\n/);
  const opus = new Set();
  for (const l of lines) {
    const m = /^a=rtpmap:(\d+) opus\/48000/i.exec(l);
    if (m) opus.add(m[1]);
  }
  const ours = ['cbr=1', `maxaveragebitrate=${PAGE_OPUS_BITRATE}`, 'usedtx=0'];
  const withFmtp = new Set();
  const out = lines.map((l) => {
    const m = /^a=fmtp:(\d+) (.*)$/.exec(l);
    if (!m || !opus.has(m[1])) return l;
    withFmtp.add(m[1]);
    const params = m[2].split(';').map((p) => p.trim())
      .filter((p) => p && !/^(cbr|maxaveragebitrate|usedtx)=/i.test(p));
    params.push(...ours);
    return `a=fmtp:${m[1]} ${params.join(';')}`;
  });
  const result = [];
  for (const l of out) {
    result.push(l);
    const m = /^a=rtpmap:(\d+) opus\/48000/i.exec(l);
    if (m && !withFmtp.has(m[1])) result.push(`a=fmtp:${m[1]} ${ours.join(';')}`);
  }
  return result.join(eol);
}

/** The candidate type (`host`, `srflx`, `prflx`, `relay`) of an ICE candidate line. */
export function candidateType(candidate) {
  const m = / typ ([a-z]+)/.exec(candidate);
  return m ? m[1] : null;
}
