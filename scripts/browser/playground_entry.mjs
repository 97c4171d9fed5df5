// The playground's copy of livekit-client (trio_sfu/api/playground/livekit-client.js) is this
// module bundled by scripts/build_playground.sh: all of the SDK, as one ES module.
export * from 'livekit-client';
