// A stand-in for the host's `portcullis:policy/log` interface: records the
// messages, which the tests read through `logged`.
export const logged = [];

export function log(level, message) {
  logged.push([level, message]);
}
