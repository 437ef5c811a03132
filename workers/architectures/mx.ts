import mlx from '@frost-beta/mlx';

export const mx = mlx.core;
export type MxArray = InstanceType<typeof mlx.core.array>;
